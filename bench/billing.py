"""Billing worker throughput end to end: real Kafka in and out, real PostgreSQL and Redis.

One input topic (4 partitions) holds `--messages` generic-metrics messages of a realistic mix
(`--mix production`: about 10 % usage counters, 2 % custom metrics for real projects, the
rest distributions, sets and gauges, 0.1 % malformed; `--mix demo`: 80 % usage counters).
Every variant reads all of it with its own consumer group, side by side in one run:

- `plain_decode`: the ceiling for consuming: a plain confluent-kafka loop, `consume()` in
  batches of 1000, decoding each value with the fleet's JSON library and schema (msgspec
  into `WireBucket`, what `parse_bucket` decodes first); produces nothing. Both plain loops
  use the fleet's librdkafka consumer tuning;
- `plain_billing`: the ceiling for the job: the same loop doing the billing work
  (`parse_bucket`, count, encode) and producing the outcomes with `produce_batch` and a
  delivery callback; no commits, no flags;
- `previous`: the chain the worker had before, `TranslateOutcomes → Produce (Arroyo's
  KafkaProducer, one future per outcome, resolved on its polling thread) → CoalesceCommits →
  CommitOffsets` (kept below, verbatim apart from its tally and its counting, now
  `billable_outcome`), on the fleet's consumer configuration, no flags;
- `fleet`: today's chain (`BillingStrategyFactory`, first-custom-metric flags on, against the
  stack's PostgreSQL and Redis) on the fleet's consumer configuration, fed by `RunConsumer`
  (one Arroyo message per partition and fetch) as `workers run billing` is;
- `fleet_per_message`: the same chain fed by Arroyo's `KafkaConsumer`, one Arroyo message
  per Kafka message, each handed to the chain as a one-message run (`OneMessageRuns`): what
  `RunConsumer` saves;
- `fleet_aggregated`: the same with `--aggregate-window-ms 200`;
- `arroyo_stock`: the issue's variant (b), the same chain on Arroyo's stock consumer and
  its stock configuration: Arroyo's `KafkaConsumer` (one message per poll) configured by
  `build_kafka_consumer_configuration`'s defaults (`queued.min.messages=10000`, librdkafka's
  `fetch.queue.backoff.ms=1000`; SPEC §7), each message handed to the chain as a
  one-message run (`OneMessageRuns`, the chain takes runs only), i.e. what dropping the
  fleet's strategy factory into a stock Arroyo consumer gives;
- `fleet_stock_config`: the same chain fed by the fleet's `RunConsumer`, on that stock
  configuration: what the configuration alone costs. With batched consumption it is a timer,
  not CPU: once a partition holds `queued.min.messages` librdkafka waits
  `fetch.queue.backoff.ms` (1 s) before fetching it again, so this variant gets at most
  about partitions x 10,000 messages per 1 s wait whatever the chain does (24,000-31,000
  msg/s measured on 4 partitions), and a short run measures how many of those waits it
  happened to straddle (use 200,000 messages or more);
- `quix_streams`: the peer, the same billing job written as a Quix Streams app
  (`bench/quix_billing_app.py`, in its own virtualenv `bench/.venv-quix` made on demand by
  `bench/quix_env.py`: Quix pins confluent-kafka < 2.13). The fleet's own decode,
  validation, counting and outcome bytes (`bench/quix_billing.py` composes the pure-Python
  modules of `workers.billing`), no flags written (custom-metric projects are
  only spotted), invalid messages dropped; the fleet's librdkafka tuning, commit interval
  (1 s) and producer settings. Its clock runs from the first message to the end of the
  checkpoint after the last one (outcomes acknowledged, offsets committed), measured in the
  app; its outcome topic is read back and must hold exactly the expected outcomes.

Arroyo variants run an in-process `StreamProcessor` (like `bench.consumer_throughput`); the
clock runs from the first message the chain sees to the moment the offsets of all messages
are released for commit, i.e. every outcome acknowledged and every flag durable. Plain loops
run from the first message to the last acknowledgement. Before each flag-enabled run the
projects' flags, their analytics events and Redis keys are reset, so every run sets them.

Prints a table, writes a bar chart (`bench/results/billing.png`) and, as the last line, one
JSON object with the figures. `--profile` runs the `fleet` variant under cProfile and prints
where the time goes. Usage: `python -m bench.billing [--messages N] [--mix production|demo]
[--repeat N] [--profile]` (needs `workers stack up` and `workers migrate`).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import cProfile
import io
import logging
import pstats
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Final, NoReturn

import msgspec
import orjson
import psycopg
from arroyo.backends.abstract import Consumer as ArroyoConsumer
from arroyo.backends.abstract import Producer as ArroyoProducer
from arroyo.backends.abstract import ProducerFuture
from arroyo.backends.kafka import KafkaConsumer, KafkaPayload, KafkaProducer
from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
from arroyo.commit import CommitPolicy
from arroyo.dlq import InvalidMessage
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies import CommitOffsets, Produce
from arroyo.processing.strategies.abstract import (
    MessageRejected,
    ProcessingStrategy,
    ProcessingStrategyFactory,
)
from arroyo.types import (
    FILTERED_PAYLOAD,
    BaseValue,
    BrokerValue,
    Commit,
    FilteredPayload,
    Message,
    Partition,
    Topic,
    Value,
)
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka import Producer as ConfluentProducer
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry
from redis import Redis

from bench.quix_env import REPO_ROOT, ensure_quix_venv
from tests.support.kafka import make_topics, unique_name
from workers.billing.counting import DEFAULT_BILLABLE_METRICS, billable_quantity
from workers.billing.definition import (
    OUTCOMES_PRODUCER_OVERRIDES,
    build_outcomes_producer,
    flag_store_factory,
)
from workers.billing.factory import BillingStrategyFactory
from workers.billing.flags import FIRST_CUSTOM_METRIC_EVENT, flag_cache_key
from workers.billing.message import BucketError, MetricBucket, WireBucket, parse_bucket
from workers.billing.outcome import OutcomeEncoder
from workers.billing.traffic import DEMO_MIX, PRODUCTION_MIX, sample_traffic_for_projects
from workers.common.kafka_config import (
    DEFAULT_COMMIT_INTERVAL_MS,
    ConsumerOptions,
    admin_configuration,
    consumer_configuration,
    producer_configuration,
)
from workers.common.message_runs import Headers, MessageRun, RunConsumer
from workers.common.metrics import FleetMetrics
from workers.common.projects import HAS_CUSTOM_METRICS_FLAG, create_organization
from workers.common.settings import Settings

PARTITIONS: Final = 4
RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
DEFAULT_CHART: Final = RESULTS_DIR / "billing.png"
PROJECTS: Final = 24
CUSTOM_PROJECTS: Final = 8
VARIANTS: Final = (
    "plain_decode",
    "plain_billing",
    "previous",
    "fleet",
    "fleet_per_message",
    "fleet_aggregated",
    "arroyo_stock",
    "fleet_stock_config",
    "quix_streams",
)


# -- what bills: `counting`'s map and quantity rule, for the loops that are not the chain ----

#: (org_id, project_id, category, quantity)
BillableOutcome = tuple[int, int, int, int]


def billable_outcome(bucket: MetricBucket) -> BillableOutcome | None:
    category = DEFAULT_BILLABLE_METRICS.get(bucket.metric_id)
    if category is None or bucket.counter is None:
        return None
    quantity = billable_quantity(bucket.counter)
    return (bucket.org_id, bucket.project_id, category, quantity) if quantity else None


# -- the previous chain (workers/billing/strategy.py before this change) ---------------------


class PreviousTally:
    """The counters the previous chain bumped (kept so its hot path is unchanged)."""

    def __init__(self) -> None:
        self.decoded = 0
        self.billable = 0
        self.produced = 0
        self.acknowledged = 0

    def invalid(self, code: str) -> None:
        pass

    def outcome(self, category: int, quantity: int) -> None:
        pass

    def observe_decode_latency(self, seconds: float) -> None:
        pass

    def maybe_flush(self, now: float) -> None:
        pass

    def flush(self) -> None:
        pass


_PreviousPayload = KafkaPayload | FilteredPayload
_new_payload: Final = partial(tuple.__new__, KafkaPayload)


class PreviousTranslateOutcomes(ProcessingStrategy[_PreviousPayload]):
    def __init__(
        self,
        next_step: ProcessingStrategy[_PreviousPayload],
        encoder: OutcomeEncoder,
        tally: PreviousTally,
        *,
        max_held_messages: int = 1000,
        max_held_seconds: float = 0.2,
    ) -> None:
        self.__next_step = next_step
        self.__encoder = encoder
        self.__tally = tally
        self.__max_held_messages = max_held_messages
        self.__max_held_seconds = max_held_seconds
        self.__held: MutableMapping[Partition, int] = {}
        self.__held_messages = 0
        self.__held_deadline = 0.0
        self.__carried: (
            tuple[BaseValue[_PreviousPayload], Message[_PreviousPayload], BillableOutcome] | None
        ) = None

    def submit(self, message: Message[_PreviousPayload]) -> None:
        value = message.value
        carried = self.__carried
        if carried is not None:
            self.__carried = None
            if carried[0] is value:
                self.__forward(value, carried[1], carried[2])
                return
        payload = value.payload
        if isinstance(payload, FilteredPayload):
            self.__hold(value.committable)
            return
        try:
            bucket = parse_bucket(payload.value)
        except BucketError as error:
            self.__reject(value, error)
        outcome = billable_outcome(bucket)
        if outcome is None:
            self.__tally.decoded += 1
            self.__hold(value.committable)
        else:
            data = self.__encoder.encode(*outcome)
            self.__forward(value, Message(value.replace(_new_payload((None, data, ())))), outcome)

    def __forward(
        self,
        value: BaseValue[_PreviousPayload],
        transformed: Message[_PreviousPayload],
        outcome: BillableOutcome,
    ) -> None:
        try:
            self.__next_step.submit(transformed)
        except MessageRejected:
            self.__carried = (value, transformed, outcome)
            raise
        if self.__held:
            for partition in transformed.committable:
                self.__held.pop(partition, None)
        self.__tally.decoded += 1
        self.__tally.billable += 1
        self.__tally.outcome(outcome[2], outcome[3])

    def __hold(self, committable: Mapping[Partition, int]) -> None:
        if not self.__held:
            self.__held_deadline = time.monotonic() + self.__max_held_seconds
        self.__held.update(committable)
        self.__held_messages += 1
        if self.__held_messages >= self.__max_held_messages:
            self.__flush_held()

    def __flush_held(self) -> bool:
        if self.__held:
            try:
                self.__next_step.submit(Message(Value(FILTERED_PAYLOAD, self.__held)))
            except MessageRejected:
                return False
        self.__held = {}
        self.__held_messages = 0
        return True

    def __reject(self, value: BaseValue[_PreviousPayload], error: BucketError) -> NoReturn:
        self.__tally.invalid(error.code)
        assert isinstance(value, BrokerValue)
        self.__hold(value.committable)
        raise InvalidMessage(
            value.partition, value.offset, reason=error.reason, log_exception=False
        ) from None

    def poll(self) -> None:
        self.__next_step.poll()
        now = time.monotonic()
        if self.__held and now >= self.__held_deadline:
            self.__flush_held()

    def close(self) -> None:
        pass

    def terminate(self) -> None:
        self.__next_step.terminate()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.__flush_held():
            if deadline is not None and time.monotonic() >= deadline:
                break
            self.__next_step.poll()
            time.sleep(0.001)
        self.__next_step.close()
        self.__next_step.join(None if deadline is None else max(deadline - time.monotonic(), 0))


class PreviousDeliveryTracker(ArroyoProducer[KafkaPayload]):
    def __init__(self, producer: ArroyoProducer[KafkaPayload]) -> None:
        self.__producer = producer
        self.__pending: deque[ProducerFuture[BrokerValue[KafkaPayload]]] = deque()

    def produce(
        self, destination: Topic | Partition, payload: KafkaPayload
    ) -> ProducerFuture[BrokerValue[KafkaPayload]]:
        future = self.__producer.produce(destination, payload)
        pending = self.__pending
        while pending and pending[0].done():
            pending.popleft()
        pending.append(future)
        return future

    def in_flight(self) -> int:
        pending = self.__pending
        while pending and pending[0].done():
            pending.popleft()
        return sum(1 for future in pending if not future.done())

    def close(self) -> Future[None]:
        done: Future[None] = Future()
        done.set_result(None)
        return done


class PreviousAwaitDeliveries(ProcessingStrategy[_PreviousPayload]):
    def __init__(
        self, produce: ProcessingStrategy[_PreviousPayload], tracker: PreviousDeliveryTracker
    ) -> None:
        self.__produce = produce
        self.__tracker = tracker

    def submit(self, message: Message[_PreviousPayload]) -> None:
        self.__produce.submit(message)

    def poll(self) -> None:
        self.__produce.poll()

    def close(self) -> None:
        self.__produce.close()

    def terminate(self) -> None:
        self.__produce.terminate()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.__tracker.in_flight():
            if deadline is not None and time.monotonic() >= deadline:
                break
            self.__produce.poll()
            time.sleep(0.001)
        self.__produce.join(None if deadline is None else max(deadline - time.monotonic(), 0))


class PreviousCoalesceCommits(ProcessingStrategy[_PreviousPayload]):
    def __init__(self, next_step: ProcessingStrategy[Any], max_messages: int = 1000) -> None:
        self.__next_step = next_step
        self.__max_messages = max_messages
        self.__offsets: dict[Partition, int] = {}
        self.__timestamp: datetime | None = None
        self.__messages = 0
        self.__deadline = 0.0
        self.__next_poll = 0.0

    def submit(self, message: Message[_PreviousPayload]) -> None:
        value = message.value
        if not self.__messages:
            self.__deadline = time.monotonic() + 0.2
        self.__offsets.update(value.committable)
        if value.timestamp is not None:
            self.__timestamp = value.timestamp
        self.__messages += 1
        if self.__messages >= self.__max_messages:
            self.__forward()

    def __forward(self) -> None:
        if self.__messages:
            offsets, self.__offsets = self.__offsets, {}
            timestamp, self.__timestamp = self.__timestamp, None
            self.__messages = 0
            self.__next_step.submit(Message(Value(FILTERED_PAYLOAD, offsets, timestamp)))

    def poll(self) -> None:
        now = time.monotonic()
        if self.__messages and now >= self.__deadline:
            self.__forward()
        if now >= self.__next_poll:
            self.__next_poll = now + 0.01
            self.__next_step.poll()

    def close(self) -> None:
        self.__next_step.close()

    def terminate(self) -> None:
        self.__next_step.terminate()

    def join(self, timeout: float | None = None) -> None:
        self.__forward()
        self.__next_step.join(timeout)


class PreviousBillingFactory(ProcessingStrategyFactory[KafkaPayload]):
    """The previous `BillingStrategyFactory` (Arroyo `KafkaProducer` with simple futures)."""

    def __init__(self, settings: Settings, outcomes_topic: str) -> None:
        self.__settings = settings
        self.__topic = Topic(outcomes_topic)
        self.__producer: KafkaProducer | None = None
        self.__encoder = OutcomeEncoder()
        self.__tally = PreviousTally()

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        if self.__producer is None:
            self.__producer = KafkaProducer(
                producer_configuration(self.__settings, client_id="bench-previous"),
                use_simple_futures=True,
            )
        tracker = PreviousDeliveryTracker(self.__producer)
        produce: Produce[KafkaPayload] = Produce(
            tracker, self.__topic, PreviousCoalesceCommits(CommitOffsets(commit)), 10_000
        )
        return PreviousTranslateOutcomes(
            PreviousAwaitDeliveries(produce, tracker), self.__encoder, self.__tally
        )

    def shutdown(self) -> None:
        if self.__producer is not None:
            self.__producer.close().result(timeout=10)


# -- measuring --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    settings: Settings
    topic: str
    messages: int
    organization_id: int
    project_ids: list[int]
    # (org_id, project_id, category, quantity) -> how many outcomes the input must yield.
    expected: Mapping[tuple[int, int, int, int], int] = field(default_factory=dict)


class Stopwatch(ProcessingStrategyFactory[Any]):
    """Wraps a factory: starts at the first message, stops when every offset is released."""

    def __init__(self, inner: ProcessingStrategyFactory[Any], messages: int) -> None:
        self.inner = inner
        self.messages = messages
        self.started: float | None = None
        self.finished: float | None = None
        self.committed: dict[Partition, int] = {}
        self.on_done: Callable[[], None] = lambda: None

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[Any]:
        def observe(offsets: Mapping[Partition, int], force: bool = False) -> None:
            self.committed.update(offsets)
            if self.finished is None and sum(self.committed.values()) >= self.messages:
                self.finished = time.perf_counter()
                self.on_done()
            commit(offsets, force)

        return _Head(self, self.inner.create_with_partitions(observe, partitions))

    def shutdown(self) -> None:
        self.inner.shutdown()


class _Head(ProcessingStrategy[Any]):
    def __init__(self, watch: Stopwatch, inner: ProcessingStrategy[Any]) -> None:
        self.__watch = watch
        self.__inner = inner

    def submit(self, message: Message[Any]) -> None:
        if self.__watch.started is None:
            self.__watch.started = time.perf_counter()
        self.__inner.submit(message)

    def poll(self) -> None:
        self.__inner.poll()

    def join(self, timeout: float | None = None) -> None:
        self.__inner.join(timeout)

    def close(self) -> None:
        self.__inner.close()

    def terminate(self) -> None:
        self.__inner.terminate()


class _PayloadMessage:
    """A `KafkaPayload` and its offset, shaped like a message of a run."""

    __slots__ = ("_offset", "_payload")

    def __init__(self, payload: KafkaPayload, offset: int) -> None:
        self._payload = payload
        self._offset = offset

    def key(self) -> bytes | None:
        return self._payload.key

    def value(self) -> bytes:
        return self._payload.value

    def headers(self) -> Headers:
        return self._payload.headers

    def offset(self) -> int:
        return self._offset


class OneMessageRuns(ProcessingStrategy[KafkaPayload]):
    """Hands each message of Arroyo's own `KafkaConsumer` to a run-taking chain as a run of one."""

    def __init__(self, next_step: ProcessingStrategy[MessageRun]) -> None:
        self.__next_step = next_step

    def submit(self, message: Message[KafkaPayload]) -> None:
        value = message.value
        assert isinstance(value, BrokerValue)
        run = MessageRun((_PayloadMessage(value.payload, value.offset),))
        self.__next_step.submit(
            Message(BrokerValue(run, value.partition, value.offset, value.timestamp))
        )

    def poll(self) -> None:
        self.__next_step.poll()

    def close(self) -> None:
        self.__next_step.close()

    def terminate(self) -> None:
        self.__next_step.terminate()

    def join(self, timeout: float | None = None) -> None:
        self.__next_step.join(timeout)


class OneMessageRunsFactory(ProcessingStrategyFactory[KafkaPayload]):
    def __init__(self, inner: ProcessingStrategyFactory[MessageRun]) -> None:
        self.__inner = inner

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        return OneMessageRuns(self.__inner.create_with_partitions(commit, partitions))

    def shutdown(self) -> None:
        self.__inner.shutdown()


def run_arroyo(
    work: Workload,
    factory: ProcessingStrategyFactory[Any],
    consumer_config: dict[str, Any],
    profile: cProfile.Profile | None = None,
    runs: bool = True,
) -> float:
    watch = Stopwatch(factory, work.messages)
    consumer: ArroyoConsumer[Any] = (
        RunConsumer(consumer_config) if runs else KafkaConsumer(consumer_config)
    )
    processor = StreamProcessor(
        consumer,
        Topic(work.topic),
        watch,
        CommitPolicy(DEFAULT_COMMIT_INTERVAL_MS / 1000.0, None),
        join_timeout=30.0,
    )
    watch.on_done = processor.signal_shutdown
    if profile is not None:
        profile.enable()
    try:
        processor.run()
    finally:
        if profile is not None:
            profile.disable()
    assert watch.started is not None
    assert watch.finished is not None, "not every offset was released"
    return work.messages / (watch.finished - watch.started)


def fleet_consumer_config(settings: Settings) -> dict[str, Any]:
    return consumer_configuration(settings, ConsumerOptions(group_id=unique_name("bench-bill")))


def stock_consumer_config(settings: Settings) -> dict[str, Any]:
    return build_kafka_consumer_configuration(
        settings.kafka_client_config(),
        group_id=unique_name("bench-bill-stock"),
        auto_offset_reset="earliest",
    )


def fleet_factory(
    work: Workload, outcomes_topic: str, aggregate_window_seconds: float | None = None
) -> BillingStrategyFactory:
    settings = work.settings
    return BillingStrategyFactory(
        producer_factory=lambda: build_outcomes_producer(settings),
        metrics=FleetMetrics(CollectorRegistry(), "billing"),
        flag_store_factory=flag_store_factory(settings),
        outcomes_topic=outcomes_topic,
        aggregate_window_seconds=aggregate_window_seconds,
    )


def _plain_consumer(settings: Settings, group: str) -> Consumer:
    """A confluent-kafka consumer with the fleet's librdkafka tuning (minus Arroyo's keys).

    The tuning matters for a ceiling: with librdkafka's default `fetch.queue.backoff.ms`
    (1 s) a loop that drains its prefetch queue (64 MiB) waits a second for the next fetch.
    """
    fleet = consumer_configuration(settings, ConsumerOptions(group_id=group))
    config = {
        key: value
        for key, value in fleet.items()
        if not key.startswith("arroyo.") and key != "stats_cb"
    }
    config["statistics.interval.ms"] = 0
    return Consumer(config)


def plain_decode(work: Workload) -> float:
    consumer = _plain_consumer(work.settings, unique_name("bench-plain"))
    consumer.subscribe([work.topic])
    seen = 0
    started: float | None = None
    decode = msgspec.json.Decoder(WireBucket).decode
    while seen < work.messages:
        for message in consumer.consume(1000, 1.0):
            if message.error() is not None:
                continue
            if started is None:
                started = time.perf_counter()
            with contextlib.suppress(msgspec.MsgspecError):
                decode(message.value() or b"")
            seen += 1
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return seen / elapsed


def plain_billing(work: Workload, outcomes_topic: str) -> float:
    consumer = _plain_consumer(work.settings, unique_name("bench-plain-billing"))
    consumer.subscribe([work.topic])
    producer: ConfluentProducer = build_outcomes_producer(work.settings)
    encoder = OutcomeEncoder()
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            failures.append(error)

    seen = 0
    started: float | None = None
    while seen < work.messages:
        batch: list[dict[str, Any]] = []
        for message in consumer.consume(1000, 1.0):
            if message.error() is not None:
                continue
            if started is None:
                started = time.perf_counter()
            seen += 1
            try:
                outcome = billable_outcome(parse_bucket(message.value() or b""))
            except BucketError:
                continue
            if outcome is not None:
                batch.append({"value": encoder.encode(*outcome)})
        if batch:
            queued = producer.produce_batch(outcomes_topic, batch, on_delivery=delivered)
            assert queued == len(batch), "producer queue full"
        producer.poll(0)
    assert producer.flush(60) == 0
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    assert not failures, failures[:3]
    return seen / elapsed


# -- the Quix Streams peer -------------------------------------------------------------------

# Keys Quix sets itself (group, offsets, commits, statistics) or that are Arroyo's own.
_QUIX_OWNED_KEYS: Final = frozenset(
    {
        "bootstrap.servers",
        "group.id",
        "auto.offset.reset",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "statistics.interval.ms",
        "stats_cb",
        "log_level",
    }
)


def _librdkafka_extras(config: Mapping[str, Any]) -> dict[str, Any]:
    """The fleet's librdkafka tuning, for Quix's `*_extra_config` (JSON scalars only)."""
    return {
        key: value
        for key, value in config.items()
        if key not in _QUIX_OWNED_KEYS
        and not key.startswith("arroyo.")
        and isinstance(value, str | int | float | bool)
    }


#: The last Quix run's own report (its JSON line), for the final figures.
quix_reports: list[dict[str, Any]] = []


def quix_streams(work: Workload, outcomes_topic: str) -> float:
    """Run the Quix Streams app in its virtualenv over the input; verify what it produced."""
    python = ensure_quix_venv()
    settings = work.settings
    consumer_extras = _librdkafka_extras(fleet_consumer_config(settings))
    producer_extras = _librdkafka_extras(
        producer_configuration(settings, "bench-quix", OUTCOMES_PRODUCER_OVERRIDES)
    )
    command = [
        str(python),
        "-m",
        "bench.quix_billing_app",
        "--broker",
        settings.kafka_bootstrap_servers,
        "--input-topic",
        work.topic,
        "--output-topic",
        outcomes_topic,
        "--group",
        unique_name("bench-bill-quix"),
        "--messages",
        str(work.messages),
        "--commit-interval",
        str(DEFAULT_COMMIT_INTERVAL_MS / 1000.0),
        "--consumer-config",
        orjson.dumps(consumer_extras).decode(),
        "--producer-config",
        orjson.dumps(producer_extras).decode(),
    ]
    finished = subprocess.run(
        command,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        check=True,
        timeout=120 + work.messages / 1000,
    )
    lines = [line for line in finished.stdout.splitlines() if line.startswith(b"{")]
    assert lines, f"the Quix app printed no report: {finished.stdout[-2000:]!r}"
    report: dict[str, Any] = orjson.loads(lines[-1])
    quix_reports.append(report)
    assert report["messages"] == work.messages, report
    expected = work.expected
    assert report["outcomes"] == sum(expected.values()), (report, sum(expected.values()))
    assert report["custom_projects"] == CUSTOM_PROJECTS, report
    verify_outcomes(work, outcomes_topic, expected)
    return float(report["msg_per_s"])


_OUTCOME_KEYS: Final = [
    "timestamp",
    "org_id",
    "project_id",
    "key_id",
    "outcome",
    "reason",
    "event_id",
    "category",
    "quantity",
]


def verify_outcomes(
    work: Workload, topic: str, expected: Mapping[tuple[int, int, int, int], int]
) -> None:
    """Read `topic` to its end: exactly the expected outcomes, keyless, in the SPEC §4 shape."""
    consumer = Consumer(
        {
            **work.settings.kafka_client_config(),
            "group.id": unique_name("bench-verify"),
            "enable.auto.commit": False,
        }
    )
    ends: dict[int, int] = {}
    assignment = []
    for index in range(PARTITIONS):
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, index), timeout=10)
        if high > low:
            ends[index] = high
            assignment.append(TopicPartition(topic, index, low))
    consumer.assign(assignment)
    seen: collections.Counter[Any] = collections.Counter()
    try:
        while ends:
            for message in consumer.consume(1000, 5.0):
                error = message.error()
                assert error is None, error
                assert message.key() is None, message.key()
                value = message.value() or b""
                outcome = orjson.loads(value)
                assert list(outcome) == _OUTCOME_KEYS, value
                assert b" " not in value, value
                assert outcome["outcome"] == 0, value
                seen[
                    (
                        outcome["org_id"],
                        outcome["project_id"],
                        outcome["category"],
                        outcome["quantity"],
                    )
                ] += 1
                partition, offset = message.partition(), message.offset()
                assert partition is not None
                assert offset is not None
                if partition in ends and offset + 1 >= ends[partition]:
                    del ends[partition]
    finally:
        consumer.close()
    assert seen == collections.Counter(expected), "the Quix app's outcomes differ"


# -- workload ---------------------------------------------------------------------------------


def prepare(settings: Settings, messages: int, mix_name: str) -> Workload:
    topic = unique_name("bench-billing")
    make_topics(settings, topic, partitions=PARTITIONS)
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        organization = create_organization(connection, f"bench-{uuid.uuid4().hex[:12]}", None)
        base = random.randrange(2**40, 2**50)
        project_ids = [base + index for index in range(PROJECTS)]
        for index, project_id in enumerate(project_ids):
            connection.execute(
                "INSERT INTO projects (id, organization_id, name, slug, platform) "
                "VALUES (%s, %s, %s, %s, 'python')",
                (project_id, organization.id, f"bench-{index}", f"bench-{index}"),
            )
    pairs = [(organization.id, project_id) for project_id in project_ids]
    traffic = sample_traffic_for_projects(
        messages,
        2024,
        pairs,
        custom_projects=pairs[:CUSTOM_PROJECTS],
        mix=PRODUCTION_MIX if mix_name == "production" else DEMO_MIX,
    )
    producer = ConfluentProducer(
        {**settings.kafka_client_config(), "linger.ms": 20, "compression.type": "lz4"}
    )
    for payload in traffic:
        while True:
            try:
                producer.produce(topic, value=payload.value)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0
    return Workload(
        settings, topic, messages, organization.id, project_ids, expected_outcomes(traffic)
    )


def expected_outcomes(traffic: Sequence[KafkaPayload]) -> collections.Counter[Any]:
    """The outcomes the input must yield (by the fleet's own decoding and counting)."""
    expected: collections.Counter[Any] = collections.Counter()
    for payload in traffic:
        try:
            outcome = billable_outcome(parse_bucket(payload.value))
        except BucketError:
            continue
        if outcome is not None:
            expected[outcome] += 1
    return expected


def reset_flags(work: Workload) -> None:
    with psycopg.connect(work.settings.database_url, autocommit=True) as connection:
        connection.execute(
            "UPDATE projects SET flags = flags & ~%s::bigint WHERE organization_id = %s",
            (HAS_CUSTOM_METRICS_FLAG, work.organization_id),
        )
        connection.execute(
            "DELETE FROM analytics_events WHERE event_type = %s AND organization_id = %s",
            (FIRST_CUSTOM_METRIC_EVENT, work.organization_id),
        )
    redis: Redis = Redis.from_url(work.settings.redis_url)
    redis.delete(*(flag_cache_key(work.organization_id, p) for p in work.project_ids))
    redis.close()


def flagged_count(work: Workload) -> int:
    with psycopg.connect(work.settings.database_url) as connection:
        row = connection.execute(
            "SELECT count(*) FROM projects WHERE organization_id = %s AND flags & %s <> 0",
            (work.organization_id, HAS_CUSTOM_METRICS_FLAG),
        ).fetchone()
    return int(row[0]) if row else 0


def cleanup(work: Workload, topics: Sequence[str]) -> None:
    reset_flags(work)
    with psycopg.connect(work.settings.database_url, autocommit=True) as connection:
        connection.execute(
            "DELETE FROM projects WHERE organization_id = %s", (work.organization_id,)
        )
        connection.execute("DELETE FROM organizations WHERE id = %s", (work.organization_id,))
    admin = AdminClient(admin_configuration(work.settings))
    for future in admin.delete_topics(list(topics), operation_timeout=30).values():
        try:
            future.result()
        except Exception as error:  # best effort
            logging.getLogger(__name__).warning("could not delete a topic: %s", error)


# The variants running today's chain: (aggregation window in seconds, Arroyo's stock
# consumer configuration instead of the fleet's, fed by `RunConsumer` rather than Arroyo's
# one-message-per-poll `KafkaConsumer` through `OneMessageRuns`).
_CHAIN_VARIANTS: Final[Mapping[str, tuple[float | None, bool, bool]]] = {
    "fleet": (None, False, True),
    "fleet_per_message": (None, False, False),
    "fleet_aggregated": (0.2, False, True),
    "arroyo_stock": (None, True, False),
    "fleet_stock_config": (None, True, True),
}


def run_variant(
    work: Workload, variant: str, profile: cProfile.Profile | None, created: list[str]
) -> float:
    """One run of `variant`; the outcomes topic it creates is appended to `created`."""
    outcomes_topic = unique_name(f"bench-billing-out-{variant.replace('_', '-')}")
    make_topics(work.settings, outcomes_topic, partitions=PARTITIONS)
    created.append(outcomes_topic)
    if variant == "plain_decode":
        return plain_decode(work)
    if variant == "plain_billing":
        return plain_billing(work, outcomes_topic)
    if variant == "quix_streams":
        return quix_streams(work, outcomes_topic)
    if variant == "previous":
        return run_arroyo(
            work,
            PreviousBillingFactory(work.settings, outcomes_topic),
            fleet_consumer_config(work.settings),
            runs=False,
        )
    if variant not in _CHAIN_VARIANTS:
        raise ValueError(f"unknown variant {variant}")
    aggregate_window_seconds, stock_config, runs = _CHAIN_VARIANTS[variant]
    consumer_config = (stock_consumer_config if stock_config else fleet_consumer_config)(
        work.settings
    )
    reset_flags(work)
    factory = fleet_factory(work, outcomes_topic, aggregate_window_seconds)
    rate = run_arroyo(
        work,
        factory if runs else OneMessageRunsFactory(factory),
        consumer_config,
        profile if variant == "fleet" else None,
        runs=runs,
    )
    flagged = flagged_count(work)
    assert flagged == CUSTOM_PROJECTS, f"{variant}: {flagged} projects flagged"
    return rate


def print_table(rates: Mapping[str, float]) -> None:
    ceiling = rates.get("plain_billing") or max(rates.values())
    baselines = [(name, rates.get(name)) for name in ("previous", "arroyo_stock", "quix_streams")]
    header = "".join(f"{'vs ' + name:>20}" for name, _ in baselines)
    print(f"{'variant':<22}{'msg/s':>12}{'vs plain_billing':>18}{header}")
    for variant, rate in rates.items():
        versus = "".join(
            f"{rate / baseline:>20.2f}" if baseline else f"{'-':>20}" for _, baseline in baselines
        )
        print(f"{variant:<22}{rate:>12,.0f}{rate / ceiling:>18.2f}{versus}")


def write_chart(rates: Mapping[str, float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(9, 4.5))
    names = list(rates)
    values = [rates[name] for name in names]
    colours = ["#9e9e9e" if name.startswith("plain") else "#1f77b4" for name in names]
    colours = [
        "#d62728" if name == "previous" else "#ff7f0e" if name == "quix_streams" else colour
        for name, colour in zip(names, colours, strict=True)
    ]
    bars = axes.barh(names, values, color=colours)
    axes.bar_label(bars, labels=[f"{value:,.0f}" for value in values], padding=3)
    axes.invert_yaxis()
    axes.set_xlabel("messages per second (higher is better)")
    axes.set_title(title)
    axes.set_xlim(0, max(values) * 1.2)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--mix", choices=("production", "demo"), default="production")
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant (median kept)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--profile", action="store_true", help="cProfile the fleet variant")
    parser.add_argument("--chart", type=Path, default=DEFAULT_CHART)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # The chains run without a DLQ topic here, and log each invalid message they skip: the
    # benchmark's mix has about 0.1% of them on purpose.
    logging.getLogger("workers.billing").setLevel(logging.ERROR)
    settings = Settings.from_env()
    variants = [name for name in args.variants.split(",") if name]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(sorted(unknown))}")
    if "quix_streams" in variants:
        ensure_quix_venv()  # before the input is produced: a broken install fails fast
    work = prepare(settings, args.messages, args.mix)
    profile = cProfile.Profile() if args.profile else None
    samples: dict[str, list[float]] = {name: [] for name in variants}
    created: list[str] = []
    try:
        for _ in range(args.repeat):
            for variant in variants:
                rate = run_variant(work, variant, profile, created)
                samples[variant].append(rate)
                print(f"  {variant}: {rate:,.0f} msg/s", file=sys.stderr)
    finally:
        cleanup(work, [work.topic, *created])
    rates = {name: statistics.median(values) for name, values in samples.items()}
    print_table(rates)
    write_chart(rates, args.chart, f"billing worker, {args.messages:,} messages, {args.mix} mix")
    print(f"chart: {args.chart}")
    if profile is not None:
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(25)
        print(text.getvalue(), file=sys.stderr)
    figures: dict[str, Any] = {
        "messages": args.messages,
        "mix": args.mix,
        "repeat": args.repeat,
        **{f"{name}_msg_per_s": round(rate, 1) for name, rate in rates.items()},
    }
    if "previous" in rates and "fleet" in rates:
        figures["fleet_vs_previous"] = round(rates["fleet"] / rates["previous"], 2)
    for stock in ("arroyo_stock", "fleet_stock_config"):
        if stock in rates and "fleet" in rates:
            figures[f"fleet_vs_{stock}"] = round(rates["fleet"] / rates[stock], 2)
    if "plain_billing" in rates and "fleet" in rates:
        figures["fleet_vs_plain_billing"] = round(rates["fleet"] / rates["plain_billing"], 2)
    if "plain_decode" in rates and "fleet" in rates:
        figures["fleet_vs_plain_decode"] = round(rates["fleet"] / rates["plain_decode"], 2)
    if "quix_streams" in rates and "fleet" in rates:
        figures["fleet_vs_quix_streams"] = round(rates["fleet"] / rates["quix_streams"], 2)
    if quix_reports:
        figures["quix_streams_last_run"] = quix_reports[-1]
    print(orjson.dumps(figures).decode())


if __name__ == "__main__":
    main()

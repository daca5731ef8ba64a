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
  app; its outcome topic is read back and must hold exactly the expected outcomes;
- `fleet_exactly_once`: `fleet` in exactly-once mode (`ExactlyOnce`, as `workers run billing
  --processing-guarantee exactly-once` builds it): outcomes and input offsets committed in
  one Kafka transaction per `--transaction-interval-ms` (default the worker's, 100 ms; a
  list such as `50,100,250` runs `fleet_exactly_once_50ms`, ... side by side). Its clock
  stops when the offsets committed in transactions cover the input (Arroyo's commit is
  never called in this mode; see `fleet_exactly_once`). Reports transactions committed and
  aborted, the mean transaction size and the p99 from first produce to commit (a histogram
  bucket bound) from the chain's own metrics; its outcomes are read back (read committed).
  A run pays fixed costs a long-running worker does not: its first commit is slower (the
  outcome topic's metadata, first partition registrations), and the last transaction commits
  only when its interval is over (on average half an interval after the last message). On
  100,000 messages (well under a second) that favours short intervals: compare intervals on
  1,000,000 messages or more;
- `quix_streams_exactly_once`: the Quix peer with `processing_guarantee="exactly-once"`.

Every outcome topic read back is read with `isolation.level=read_committed` to the end of
each partition (not to its high watermark: transaction markers take offsets too).

Arroyo variants run an in-process `StreamProcessor` (like `bench.consumer_throughput`); the
clock runs from the first message the chain sees to the moment the offsets of all messages
are released for commit, i.e. every outcome acknowledged and every flag durable. Plain loops
run from the first message to the last acknowledgement. Before each flag-enabled run the
projects' flags, their analytics events and Redis keys are reset, so every run sets them.

Prints a table, writes a bar chart (`bench/results/billing.png`) and, as the last line, one
JSON object with the figures. After the table: the issue's ratios against their targets
(`fleet_exactly_once / fleet` >= 0.8, `/ quix_streams_exactly_once` >= 2, `fleet /
plain_billing` >= 0.85) and the exactly-once transactions. `--profile` runs the `fleet`
variant under cProfile and prints where the time goes. Usage: `python -m bench.billing
[--messages N] [--mix production|demo] [--repeat N] [--transaction-interval-ms MS[,MS...]]
[--profile]` (needs `workers stack up` and `workers migrate`).
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
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka import Producer as ConfluentProducer
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry
from prometheus_client.samples import Sample
from redis import Redis

from bench.quix_env import REPO_ROOT, ensure_quix_venv
from harness.kafka import make_topics, unique_name
from workers.billing.counting import DEFAULT_BILLABLE_METRICS, billable_quantity
from workers.billing.definition import (
    DEFAULT_TRANSACTION_INTERVAL_MS,
    DEFAULT_TRANSACTION_TIMEOUT_MS,
    OUTCOMES_PRODUCER_OVERRIDES,
    build_outcomes_producer,
    flag_store_factory,
    transactional_producer_overrides,
)
from workers.billing.factory import BillingStrategyFactory
from workers.billing.flags import FIRST_CUSTOM_METRIC_EVENT, flag_cache_key
from workers.billing.message import BucketError, MetricBucket, WireBucket, parse_bucket
from workers.billing.outcome import OutcomeEncoder
from workers.billing.traffic import DEMO_MIX, PRODUCTION_MIX, sample_traffic_for_projects
from workers.billing.transactions import ExactlyOnce, TransactionalProducer
from workers.common.kafka_config import (
    DEFAULT_COMMIT_INTERVAL_MS,
    ConsumerOptions,
    admin_configuration,
    consumer_configuration,
    producer_configuration,
)
from workers.common.kafka_offsets import fully_committed
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
    "fleet_exactly_once",
    "quix_streams_exactly_once",
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
    """Wraps a factory: starts at the first message, stops when every offset is released.

    Released means handed to Arroyo's commit (at-least-once chains), or committed in a Kafka
    transaction (`fleet_exactly_once`, whose producer reports to `released` itself: Arroyo's
    commit is never called in exactly-once mode).
    """

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
            self.released(offsets)
            commit(offsets, force)

        return _Head(self, self.inner.create_with_partitions(observe, partitions))

    def released(self, offsets: Mapping[Partition, int]) -> None:
        """These offsets are released; stops the clock once they cover the whole input."""
        self.committed.update(offsets)
        if self.finished is None and sum(self.committed.values()) >= self.messages:
            self.finished = time.perf_counter()
            self.on_done()

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
    consumer: ArroyoConsumer[Any] | None = None,
) -> float:
    """Run `factory` (wrapped in a `Stopwatch` unless it is one) to the end of the input.

    `consumer`: one built by the caller (the exactly-once chain needs the `RunConsumer` that
    feeds it); by default one is made from `consumer_config`.
    """
    watch = factory if isinstance(factory, Stopwatch) else Stopwatch(factory, work.messages)
    if consumer is None:
        consumer = RunConsumer(consumer_config) if runs else KafkaConsumer(consumer_config)
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
    work: Workload,
    outcomes_topic: str,
    aggregate_window_seconds: float | None = None,
    exactly_once: ExactlyOnce | None = None,
    registry: CollectorRegistry | None = None,
) -> BillingStrategyFactory:
    settings = work.settings
    return BillingStrategyFactory(
        producer_factory=None if exactly_once else lambda: build_outcomes_producer(settings),
        exactly_once=exactly_once,
        metrics=FleetMetrics(CollectorRegistry() if registry is None else registry, "billing"),
        flag_store_factory=flag_store_factory(settings),
        outcomes_topic=outcomes_topic,
        aggregate_window_seconds=aggregate_window_seconds,
    )


# -- the fleet's chain in exactly-once mode -------------------------------------------------


class CommitReportingProducer:
    """The transactional outcomes producer, reporting the input offsets of each commit.

    Delegates every call to the producer `workers run billing` builds; in addition it keeps
    the offsets given to `send_offsets_to_transaction` and, once `commit_transaction`
    returned (the transaction, offsets included, is committed), hands them to `committed`.
    That is the moment `DeliverInTransactions` records them as its committed position: the
    same information as polling the group's committed offsets
    (`workers.common.kafka_offsets.fully_committed`), without a round trip per check or a
    polling interval in the measurement. A few dict operations per transaction.
    """

    def __init__(
        self,
        producer: TransactionalProducer,
        committed: Callable[[Mapping[Partition, int]], None],
    ) -> None:
        self.__producer = producer
        self.__committed = committed
        self.__offsets: dict[Partition, int] = {}

    def produce_batch(
        self,
        topic: str,
        messages: list[dict[str, Any]],
        partition: int = -1,
        callback: Callable[[Any, Any], None] | None = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> int:
        report = on_delivery or callback
        if report is None:
            return self.__producer.produce_batch(topic, messages, partition)
        return self.__producer.produce_batch(topic, messages, partition, on_delivery=report)

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: Any = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        self.__producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)

    def poll(self, timeout: float = -1) -> int:
        return self.__producer.poll(timeout)

    def flush(self, timeout: float = -1) -> int:
        return self.__producer.flush(timeout)

    def init_transactions(self, timeout: float = -1) -> None:
        self.__producer.init_transactions(timeout)

    def begin_transaction(self) -> None:
        self.__offsets = {}
        self.__producer.begin_transaction()

    def send_offsets_to_transaction(
        self, positions: list[Any], group_metadata: Any, timeout: float = -1
    ) -> None:
        self.__producer.send_offsets_to_transaction(positions, group_metadata, timeout)
        self.__offsets = {
            Partition(Topic(position.topic), position.partition): position.offset
            for position in positions
        }

    def commit_transaction(self, timeout: float = -1) -> None:
        self.__producer.commit_transaction(timeout)
        offsets, self.__offsets = self.__offsets, {}
        if offsets:
            self.__committed(offsets)

    def abort_transaction(self, timeout: float = -1) -> None:
        self.__offsets = {}
        self.__producer.abort_transaction(timeout)


@dataclass(frozen=True)
class TransactionFigures:
    """What one `fleet_exactly_once` run's transactions looked like (from its registry)."""

    interval_ms: int
    committed: int
    aborted: int
    # Messages (outcomes + DLQ copies) per committed transaction, and their total.
    mean_size: float
    messages: int
    # First produce to commit: the exact mean, and the p99 as a histogram bucket bound.
    mean_open_seconds: float
    p99_open_seconds_bound: float
    # The commit itself (offsets sent, `commit_transaction`): the consumer thread waits.
    mean_commit_seconds: float


#: The transactions of each `fleet_exactly_once` variant run (the last run of each).
transaction_figures: dict[str, TransactionFigures] = {}


def _samples(registry: CollectorRegistry, name: str) -> list[Sample]:
    """Every sample named `name` (all label sets)."""
    return [
        sample for metric in registry.collect() for sample in metric.samples if sample.name == name
    ]


def _total(registry: CollectorRegistry, name: str) -> float:
    return sum(sample.value for sample in _samples(registry, name))


def quantile_bucket_bound(registry: CollectorRegistry, histogram: str, quantile: float) -> float:
    """The upper bound of the bucket holding `quantile` of `histogram`'s observations.

    Prometheus buckets are cumulative: the first bound whose count reaches `quantile` of the
    total (`inf` past the last finite bucket, `nan` without observations). An upper bound,
    not an interpolation: the true quantile lies between it and the bucket below.
    """
    buckets: dict[float, float] = collections.defaultdict(float)
    for sample in _samples(registry, f"{histogram}_bucket"):
        buckets[float(sample.labels["le"])] += sample.value
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return float("nan")
    return next(bound for bound in sorted(buckets) if buckets[bound] >= quantile * total)


def read_transaction_figures(registry: CollectorRegistry, interval_ms: int) -> TransactionFigures:
    committed = _total(registry, "workers_billing_transactions_committed_total")
    size_count = _total(registry, "workers_billing_transaction_size_messages_count")
    size_sum = _total(registry, "workers_billing_transaction_size_messages_sum")
    open_count = _total(registry, "workers_billing_transaction_open_seconds_count")
    open_sum = _total(registry, "workers_billing_transaction_open_seconds_sum")
    commit_count = _total(registry, "workers_billing_transaction_commit_seconds_count")
    commit_sum = _total(registry, "workers_billing_transaction_commit_seconds_sum")
    return TransactionFigures(
        interval_ms=interval_ms,
        committed=round(committed),
        aborted=round(_total(registry, "workers_billing_transactions_aborted_total")),
        mean_size=size_sum / size_count if size_count else float("nan"),
        messages=round(size_sum),
        mean_open_seconds=open_sum / open_count if open_count else float("nan"),
        p99_open_seconds_bound=quantile_bucket_bound(
            registry, "workers_billing_transaction_open_seconds", 0.99
        ),
        mean_commit_seconds=commit_sum / commit_count if commit_count else float("nan"),
    )


def fleet_exactly_once(
    work: Workload, variant: str, outcomes_topic: str, transaction_interval_ms: int
) -> float:
    """Today's chain (flags on) in exactly-once mode, built as `workers run billing` builds it.

    A `RunConsumer` made here feeds the `StreamProcessor` and is also the chain's
    `ExactlyOnce.consumer` (group metadata for `send_offsets_to_transaction`, seeks on an
    abort). The transactional producer is `build_outcomes_producer` with
    `transactional_producer_overrides` (a transactional id unique to the run, the worker's
    default transaction timeout); the factory calls `init_transactions`. No DLQ topic, like
    the other chains here (invalid messages are skipped), so a transaction holds outcomes.

    The clock stops when the offsets committed in transactions cover the whole input
    (reported by `CommitReportingProducer`; Arroyo's commit callback is never called in this
    mode). Unlike the at-least-once chains, whose clock stops when offsets are handed to
    Arroyo's commit (Arroyo commits them within its 1 s commit interval), this includes the
    broker's commit. Checked afterwards, off the clock: the group's committed offsets cover
    the input (`fully_committed`), the outcomes topic read with `read_committed` holds
    exactly the expected outcomes, the committed transactions carried exactly that many
    messages, and every custom-metric project was flagged.
    """
    settings = work.settings
    consumer_config = fleet_consumer_config(settings)
    consumer = RunConsumer(consumer_config)
    registry = CollectorRegistry()
    overrides = transactional_producer_overrides(
        unique_name("bench-billing-txn"), DEFAULT_TRANSACTION_TIMEOUT_MS
    )

    def transactional_producer() -> TransactionalProducer:
        return CommitReportingProducer(build_outcomes_producer(settings, overrides), watch.released)

    mode = ExactlyOnce(
        producer_factory=transactional_producer,
        consumer=consumer,
        transaction_interval_seconds=transaction_interval_ms / 1000.0,
    )
    watch = Stopwatch(
        fleet_factory(work, outcomes_topic, exactly_once=mode, registry=registry), work.messages
    )
    reset_flags(work)
    rate = run_arroyo(work, watch, consumer_config, consumer=consumer)
    group = str(consumer_config["group.id"])
    assert fully_committed(settings, group, work.topic), f"{variant}: input not all committed"
    figures = read_transaction_figures(registry, transaction_interval_ms)
    transaction_figures[variant] = figures
    expected_total = sum(work.expected.values())
    assert figures.messages == expected_total, (variant, figures, expected_total)
    verify_outcomes(work, outcomes_topic, work.expected)
    flagged = flagged_count(work)
    assert flagged == CUSTOM_PROJECTS, f"{variant}: {flagged} projects flagged"
    return rate


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


#: The last Quix run's own report (its JSON line) per variant, for the final figures.
quix_reports: dict[str, dict[str, Any]] = {}

QUIX_GUARANTEES: Final[Mapping[str, str]] = {
    "quix_streams": "at-least-once",
    "quix_streams_exactly_once": "exactly-once",
}


def quix_streams(work: Workload, outcomes_topic: str, variant: str = "quix_streams") -> float:
    """Run the Quix Streams app in its virtualenv over the input; verify what it produced.

    `quix_streams_exactly_once` passes `--processing-guarantee exactly-once` (Quix's
    `Application(processing_guarantee="exactly-once")`): one Kafka transaction per
    checkpoint, i.e. per commit interval (the same 1 s as at-least-once; Quix flushes its
    producer at each checkpoint, so a longer interval favours it).
    """
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
        "--processing-guarantee",
        QUIX_GUARANTEES[variant],
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
    quix_reports[variant] = report
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
    """Read `topic` to its end: exactly the expected outcomes, keyless, in the SPEC §4 shape.

    Reads committed data only (`isolation.level=read_committed`: nothing of an aborted
    transaction) to the end of each partition as librdkafka reports it (its end-of-partition
    event), not to the high watermark: transaction markers take offsets too, so a partition
    written in transactions ends past its last record.
    """
    consumer = Consumer(
        {
            **work.settings.kafka_client_config(),
            "group.id": unique_name("bench-verify"),
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(topic, index, OFFSET_BEGINNING) for index in range(PARTITIONS)])
    ended: set[int] = set()
    seen: collections.Counter[Any] = collections.Counter()
    deadline = time.monotonic() + 60 + work.messages / 10_000
    try:
        while len(ended) < PARTITIONS:
            assert time.monotonic() < deadline, f"{topic}: only partitions {ended} read to the end"
            for message in consumer.consume(1000, 1.0):
                error = message.error()
                partition = message.partition()
                assert partition is not None
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, error
                    ended.add(partition)
                    continue
                ended.discard(partition)
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
    finally:
        consumer.close()
    wanted = collections.Counter(expected)
    assert seen == wanted, (
        f"{topic}: {sum((seen - wanted).values())} unexpected outcomes, "
        f"{sum((wanted - seen).values())} missing"
    )


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
    work: Workload,
    variant: str,
    profile: cProfile.Profile | None,
    created: list[str],
    transaction_interval_ms: int = DEFAULT_TRANSACTION_INTERVAL_MS,
) -> float:
    """One run of `variant`; the outcomes topic it creates is appended to `created`."""
    outcomes_topic = unique_name(f"bench-billing-out-{variant.replace('_', '-')}")
    make_topics(work.settings, outcomes_topic, partitions=PARTITIONS)
    created.append(outcomes_topic)
    if variant == "plain_decode":
        return plain_decode(work)
    if variant == "plain_billing":
        return plain_billing(work, outcomes_topic)
    if variant in QUIX_GUARANTEES:
        return quix_streams(work, outcomes_topic, variant)
    if variant.startswith("fleet_exactly_once"):
        return fleet_exactly_once(work, variant, outcomes_topic, transaction_interval_ms)
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
    print(f"{'variant':<28}{'msg/s':>12}{'vs plain_billing':>18}{header}")
    for variant, rate in rates.items():
        versus = "".join(
            f"{rate / baseline:>20.2f}" if baseline else f"{'-':>20}" for _, baseline in baselines
        )
        print(f"{variant:<28}{rate:>12,.0f}{rate / ceiling:>18.2f}{versus}")


# Issue 13's targets: (numerator, denominator, at least).
RATIO_TARGETS: Final = (
    ("fleet_exactly_once", "fleet", 0.8),
    ("fleet_exactly_once", "quix_streams_exactly_once", 2.0),
    ("fleet", "plain_billing", 0.85),
)


def exactly_once_reference(rates: Mapping[str, float]) -> str | None:
    """The `fleet_exactly_once` variant the ratios use: the only one, or the default interval's."""
    if "fleet_exactly_once" in rates:
        return "fleet_exactly_once"
    default = f"fleet_exactly_once_{DEFAULT_TRANSACTION_INTERVAL_MS}ms"
    if default in rates:
        return default
    return next((name for name in rates if name.startswith("fleet_exactly_once")), None)


def ratios(rates: Mapping[str, float]) -> list[tuple[str, str, float, float]]:
    """(numerator, denominator, ratio, target) for each target whose variants ran."""
    reference = exactly_once_reference(rates)
    found = []
    for numerator, denominator, target in RATIO_TARGETS:
        name = reference if numerator == "fleet_exactly_once" else numerator
        if name is not None and name in rates and rates.get(denominator):
            found.append((name, denominator, rates[name] / rates[denominator], target))
    return found


def print_summary(rates: Mapping[str, float]) -> None:
    """The issue's ratios against their targets, then the exactly-once runs' transactions."""
    found = ratios(rates)
    if found:
        print("\nratios (issue 13 targets)")
        for numerator, denominator, ratio, target in found:
            verdict = "ok" if ratio >= target else "below target"
            label = f"{numerator} / {denominator}"
            print(f"  {label:<52}{ratio:>6.2f}  (target >= {target:.2f}: {verdict})")
    if transaction_figures:
        print(
            "\ntransactions (fleet exactly-once; p99 first produce to commit is the upper bound "
            "of its histogram bucket)"
        )
        print(
            f"  {'variant':<28}{'interval':>9}{'committed':>11}{'aborted':>9}"
            f"{'mean size':>11}{'mean open':>11}{'p99 open <=':>13}{'mean commit':>13}"
        )
        for name, figures in transaction_figures.items():
            print(
                f"  {name:<28}{figures.interval_ms:>7}ms{figures.committed:>11,}"
                f"{figures.aborted:>9}{figures.mean_size:>11,.0f}"
                f"{figures.mean_open_seconds * 1000:>9.1f}ms"
                f"{figures.p99_open_seconds_bound * 1000:>11,.0f}ms"
                f"{figures.mean_commit_seconds * 1000:>11.1f}ms"
            )


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
        "#d62728"
        if name == "previous"
        else "#ff7f0e"
        if name.startswith("quix_streams")
        else colour
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
    parser.add_argument(
        "--transaction-interval-ms",
        default=str(DEFAULT_TRANSACTION_INTERVAL_MS),
        help="fleet_exactly_once's transaction interval; several (e.g. 50,100,250) run one "
        "variant each, named fleet_exactly_once_<ms>ms",
    )
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
    intervals = [int(ms) for ms in args.transaction_interval_ms.split(",") if ms]
    if not intervals or min(intervals) < 1:
        raise SystemExit("--transaction-interval-ms: positive milliseconds, comma-separated")
    interval_of: dict[str, int] = {}
    if len(intervals) == 1:
        interval_of["fleet_exactly_once"] = intervals[0]
    elif "fleet_exactly_once" in variants:
        expanded = {f"fleet_exactly_once_{ms}ms": ms for ms in intervals}
        interval_of.update(expanded)
        at = variants.index("fleet_exactly_once")
        variants[at : at + 1] = list(expanded)
    if set(variants) & set(QUIX_GUARANTEES):
        ensure_quix_venv()  # before the input is produced: a broken install fails fast
    work = prepare(settings, args.messages, args.mix)
    profile = cProfile.Profile() if args.profile else None
    samples: dict[str, list[float]] = {name: [] for name in variants}
    created: list[str] = []
    try:
        for _ in range(args.repeat):
            for variant in variants:
                rate = run_variant(
                    work,
                    variant,
                    profile,
                    created,
                    interval_of.get(variant, DEFAULT_TRANSACTION_INTERVAL_MS),
                )
                samples[variant].append(rate)
                print(f"  {variant}: {rate:,.0f} msg/s", file=sys.stderr)
    finally:
        cleanup(work, [work.topic, *created])
    rates = {name: statistics.median(values) for name, values in samples.items()}
    print_table(rates)
    print_summary(rates)
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
    for numerator, denominator, ratio, _ in ratios(rates):
        figures[f"{numerator}_vs_{denominator}"] = round(ratio, 2)
    for name, transactions in transaction_figures.items():
        figures[f"{name}_transactions"] = {
            "interval_ms": transactions.interval_ms,
            "committed": transactions.committed,
            "aborted": transactions.aborted,
            "mean_size": round(transactions.mean_size, 1),
            "mean_open_s": round(transactions.mean_open_seconds, 4),
            "p99_open_s_bucket_bound": transactions.p99_open_seconds_bound,
            "mean_commit_s": round(transactions.mean_commit_seconds, 4),
        }
    for name, report in quix_reports.items():
        figures[f"{name}_last_run"] = report
    print(orjson.dumps(figures).decode())


if __name__ == "__main__":
    main()

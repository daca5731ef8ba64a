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
  `fetch.queue.backoff.ms=1000`; docs/reference.md, Arroyo and librdkafka), each message
  handed to the chain as a
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
variant under cProfile and prints where the time goes. `--revision REV` compares with an
older chain: it also runs the `fleet` variant as of git revision REV (`bench/revision.py`:
`git archive` into a temporary directory, run there on the same stack), shown as
`fleet@REV`. Usage: `python -m bench.billing [--messages N] [--mix production|demo]
[--repeat N] [--transaction-interval-ms MS[,MS...]] [--profile] [--revision REV]` (needs
`workers stack up` and `workers migrate`).
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec
import orjson
import psycopg
from arroyo.backends.abstract import Consumer as ArroyoConsumer
from arroyo.backends.kafka import KafkaConsumer, KafkaPayload
from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
from arroyo.commit import CommitPolicy
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies.abstract import (
    ProcessingStrategy,
    ProcessingStrategyFactory,
)
from arroyo.types import (
    BrokerValue,
    Commit,
    Message,
    Partition,
    Topic,
)
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka import Producer as ConfluentProducer
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry
from prometheus_client.samples import Sample
from redis import Redis

from bench import report
from bench.quix_env import REPO_ROOT, ensure_quix_venv
from bench.revision import figures_at_revision
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
    app_report: dict[str, Any] = orjson.loads(lines[-1])
    quix_reports[variant] = app_report
    assert app_report["messages"] == work.messages, app_report
    expected = work.expected
    assert app_report["outcomes"] == sum(expected.values()), (app_report, sum(expected.values()))
    assert app_report["custom_projects"] == CUSTOM_PROJECTS, app_report
    verify_outcomes(work, outcomes_topic, expected)
    return float(app_report["msg_per_s"])


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
    """Read `topic` to its end: exactly the expected outcomes, keyless, in the exact shape
    of docs/reference.md, Billing outcomes.

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
    baselines = [name for name in ("arroyo_stock", "quix_streams") if rates.get(name)]
    baselines += [name for name in rates if "@" in name]
    report.print_table(
        ["variant", "msg/s", "vs plain_billing", *(f"vs {name}" for name in baselines)],
        [
            [
                variant,
                f"{rate:,.0f}",
                f"{rate / ceiling:.2f}",
                *(f"{rate / rates[name]:.2f}" for name in baselines),
            ]
            for variant, rate in rates.items()
        ],
    )


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


TRANSACTION_COLUMNS: Final = (
    *("variant", "interval", "committed", "aborted"),
    *("mean size", "mean open", "p99 open <=", "mean commit"),
)


def print_summary(rates: Mapping[str, float]) -> None:
    """The issue's ratios against their targets, then the exactly-once runs' transactions."""
    found = ratios(rates)
    if found:
        print("\nratios (issue 13 targets)")
        report.print_table(
            ["ratio", "value", "target", "verdict"],
            [
                [
                    f"{numerator} / {denominator}",
                    f"{ratio:.2f}",
                    f">= {target:.2f}",
                    "ok" if ratio >= target else "below target",
                ]
                for numerator, denominator, ratio, target in found
            ],
            indent="  ",
        )
    if transaction_figures:
        print(
            "\ntransactions (fleet exactly-once; p99 first produce to commit is the upper bound "
            "of its histogram bucket)"
        )
        report.print_table(
            TRANSACTION_COLUMNS,
            [
                [
                    name,
                    f"{figures.interval_ms}ms",
                    f"{figures.committed:,}",
                    figures.aborted,
                    f"{figures.mean_size:,.0f}",
                    f"{figures.mean_open_seconds * 1000:.1f}ms",
                    f"{figures.p99_open_seconds_bound * 1000:,.0f}ms",
                    f"{figures.mean_commit_seconds * 1000:.1f}ms",
                ]
                for name, figures in transaction_figures.items()
            ],
            indent="  ",
        )


def write_chart(rates: Mapping[str, float], path: Path, title: str) -> None:
    colours = {
        name: "#9e9e9e"
        if name.startswith("plain")
        else "#ff7f0e"
        if name.startswith("quix_streams")
        else "#d62728"
        if "@" in name
        else "#1f77b4"
        for name in rates
    }
    report.bar_chart(path, rates, title, "messages per second (higher is better)", colours)


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
    parser.add_argument(
        "--revision",
        help="also run the fleet variant as of this git revision (bench/revision.py), "
        "shown as fleet@REVISION",
    )
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
    if args.revision:
        before = figures_at_revision(
            args.revision,
            "bench.billing",
            [
                *("--messages", str(args.messages), "--mix", args.mix),
                *("--repeat", str(args.repeat), "--variants", "fleet"),
                *("--chart", str(args.chart.with_suffix(".revision.png"))),
            ],
            settings,
        )
        rates[f"fleet@{args.revision}"] = before["fleet_msg_per_s"]
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
    if args.revision and "fleet" in rates:
        figures["revision"] = args.revision
        figures["fleet_vs_revision"] = round(rates["fleet"] / rates[f"fleet@{args.revision}"], 2)
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
    for name, last_run in quix_reports.items():
        figures[f"{name}_last_run"] = last_run
    report.print_figures(figures)


if __name__ == "__main__":
    main()

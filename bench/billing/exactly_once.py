"""The `fleet_exactly_once` variant: the chain in exactly-once mode and its transactions.

`CommitReportingProducer` reports the input offsets of each committed transaction to the
`Stopwatch`; `read_transaction_figures` reads the run's transactions from its metrics into
`transaction_figures` for the summary.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from arroyo.types import Partition, Topic
from prometheus_client import CollectorRegistry
from prometheus_client.samples import Sample

from bench.billing.chain import Stopwatch, fleet_consumer_config, fleet_factory, run_arroyo
from bench.billing.verify import verify_outcomes
from bench.billing.workload import CUSTOM_PROJECTS, Workload, flagged_count, reset_flags
from harness.kafka import unique_name
from workers.billing.definition import (
    DEFAULT_TRANSACTION_TIMEOUT_MS,
    build_outcomes_producer,
    transactional_producer_overrides,
)
from workers.billing.transactions import ExactlyOnce, TransactionalProducer
from workers.common.kafka_offsets import fully_committed
from workers.common.message_runs import RunConsumer


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

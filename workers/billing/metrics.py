"""The billing worker's metrics: hot-path tallies flushed about once a second.

A Prometheus `Counter.inc` takes a lock (a few hundred ns); at tens of thousands of messages
a second and several counters per message that is a large share of the budget, so the
strategies bump plain integers of a `BillingTally` and the chain flushes them from `poll()`
once a second and on `join()`. Rare events (an invalid message, a flag check) are recorded
at once.

Per-step series (`workers_step_*{worker="billing", step=...}`, from `FleetMetrics`):

- `decode`: in = every message, out = valid buckets, invalid by reason code;
- `count`: in = valid buckets, out = billable buckets;
- `produce`: in = outcomes handed to the producer, out = outcomes acknowledged by Kafka
  (with `--aggregate-window-ms`, one outcome stands for many billable buckets);
- `flag`: in = custom-metric projects handed to the flag writer, out = checks finished.

`decode` latency is sampled: each time the message count passes a multiple of
`LATENCY_SAMPLE_EVERY`, the mean time per message of the run being translated is observed.

Billing series (`BillingMetrics`, registered in the fleet registry, every one with `worker`):

- `workers_billing_messages_total{type,use_case}`: valid buckets by metric type (`c d s g`)
  and use case (Sentry's use cases; anything else is `other`);
- `workers_billing_billable_buckets_total{category}`;
- `workers_billing_outcomes_total{category}` and `workers_billing_outcome_quantity_total
  {category}`: acknowledged outcomes and the quantity they carry;
- `workers_billing_produce_latency_seconds`: from handing a batch of outcomes to the producer
  until Kafka acknowledged the last of them;
- `workers_billing_produce_retries_total{error}`: outcomes produced again after a retriable
  delivery error (librdkafka error name);
- `workers_billing_outcomes_in_flight`: outcomes handed to the producer, not yet acknowledged;
- `workers_billing_custom_metric_checks_total{result}`: custom-metric projects by what the
  flag path found (`process_cache`, `redis_key`, `already_flagged`, `flagged`,
  `missing_project`);
- `workers_billing_flags_set_total`: projects whose flag this worker set (one analytics event
  each);
- `workers_billing_flag_errors_total{store}`: failed attempts of the flag work (`redis`,
  `postgres`), each retried with backoff.

Categories are labelled by name (`transaction`, `span`) or by number for a configured
category without a name; the set is bounded by the `--billable-metric` map.

Exactly-once series (Kafka transactions; every series exists from the start, at 0):

- `workers_billing_transactions_committed_total`;
- `workers_billing_transaction_commit_seconds`: the commit itself (sending the offsets to the
  transaction plus `commit_transaction`);
- `workers_billing_transaction_open_seconds`: from the transaction's first produce to its
  commit;
- `workers_billing_transaction_size_messages`: messages (outcomes and DLQ copies) per
  committed transaction;
- `workers_billing_transactions_aborted_total{reason}`: `produce_error` (a delivery inside the
  transaction failed), `commit_error` (an abortable error of `send_offsets_to_transaction` or
  `commit_transaction`), `revoked` (partitions revoked, or shutdown, before the transaction
  could be committed in time); no other reason is accepted;
- `workers_billing_producer_fenced_total`: a newer producer with the same transactional id,
  or the group coordinator, fenced this process (which then exits non-zero).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from workers.billing.counting import DataCategory

DECODE_STEP: Final = "decode"
COUNT_STEP: Final = "count"
PRODUCE_STEP: Final = "produce"
FLAG_STEP: Final = "flag"

#: One `decode` latency observation per this many messages (a power of two).
LATENCY_SAMPLE_EVERY: Final = 256
DEFAULT_FLUSH_INTERVAL_SECONDS: Final = 1.0

#: Sentry's metrics use cases; any other `use_case_id` is labelled `other`.
KNOWN_USE_CASES: Final = frozenset(
    {
        "transactions",
        "spans",
        "sessions",
        "custom",
        "escalating_issues",
        "metric_stats",
        "profiles",
        "bundle_analysis",
        "uptime",
        "performance",
        "release-health",
    }
)
OTHER_USE_CASE: Final = "other"

# Flag check results (label values of `workers_billing_custom_metric_checks_total`).
CHECK_PROCESS_CACHE: Final = "process_cache"
CHECK_REDIS_KEY: Final = "redis_key"
CHECK_ALREADY_FLAGGED: Final = "already_flagged"
CHECK_FLAGGED: Final = "flagged"
CHECK_MISSING_PROJECT: Final = "missing_project"
CHECK_RESULTS: Final = (
    CHECK_PROCESS_CACHE,
    CHECK_REDIS_KEY,
    CHECK_ALREADY_FLAGGED,
    CHECK_FLAGGED,
    CHECK_MISSING_PROJECT,
)
STORE_REDIS: Final = "redis"
STORE_POSTGRES: Final = "postgres"

# Why a Kafka transaction was aborted (label values of
# `workers_billing_transactions_aborted_total`; any other value is refused).
ABORT_PRODUCE_ERROR: Final = "produce_error"
ABORT_COMMIT_ERROR: Final = "commit_error"
ABORT_REVOKED: Final = "revoked"
ABORT_REASONS: Final = (ABORT_PRODUCE_ERROR, ABORT_COMMIT_ERROR, ABORT_REVOKED)

# Produce-to-acknowledgement latency: 1 ms … 10 min.
_PRODUCE_LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    600.0,
)
# Sending the offsets plus `commit_transaction`: 1 ms … 30 s.
_COMMIT_LATENCY_BUCKETS: Final = _PRODUCE_LATENCY_BUCKETS[
    : _PRODUCE_LATENCY_BUCKETS.index(30.0) + 1
]
# First produce to commit: 5 ms … 60 s (the transaction interval is in this range).
_OPEN_TIME_BUCKETS: Final = _PRODUCE_LATENCY_BUCKETS[
    _PRODUCE_LATENCY_BUCKETS.index(0.005) : _PRODUCE_LATENCY_BUCKETS.index(60.0) + 1
]
# Messages per committed transaction: 1 … 100,000, in half decades.
_TRANSACTION_SIZE_BUCKETS: Final = (
    1.0,
    3.0,
    10.0,
    30.0,
    100.0,
    300.0,
    1000.0,
    3000.0,
    10000.0,
    30000.0,
    100000.0,
)


class StepRecorder(Protocol):
    """What the billing worker needs of `workers.common.metrics.StepMetrics`."""

    def message_in(self, n: int = 1) -> None: ...

    def message_out(self, n: int = 1) -> None: ...

    def invalid(self, reason: str, n: int = 1) -> None: ...

    def observe_latency(self, seconds: float) -> None: ...


class MetricsSource(Protocol):
    """What the billing worker needs of `workers.common.metrics.FleetMetrics`."""

    def step(self, name: str) -> StepRecorder: ...

    def dlq_message(self, reason: str, n: int = 1) -> None: ...

    @property
    def registry(self) -> CollectorRegistry: ...


def category_label(category: int) -> str:
    """`transaction`, `span`, or the number of a configured category without a name."""
    try:
        return DataCategory(category).name.lower()
    except ValueError:
        return str(category)


class BillingMetrics:
    """The billing worker's own Prometheus series; one instance per process and registry."""

    def __init__(self, registry: CollectorRegistry, worker: str = "billing") -> None:
        self.worker = worker
        self._messages = Counter(
            "workers_billing_messages_total",
            "Valid generic-metrics buckets consumed, by metric type and use case.",
            ("worker", "type", "use_case"),
            registry=registry,
        )
        self._billable = Counter(
            "workers_billing_billable_buckets_total",
            "Buckets that bill (one outcome each, or part of an aggregate), by data category.",
            ("worker", "category"),
            registry=registry,
        )
        self._outcomes = Counter(
            "workers_billing_outcomes_total",
            "Accepted outcomes acknowledged by Kafka, by data category.",
            ("worker", "category"),
            registry=registry,
        )
        self._quantity = Counter(
            "workers_billing_outcome_quantity_total",
            "Sum of the quantities carried by the acknowledged outcomes, by data category.",
            ("worker", "category"),
            registry=registry,
        )
        self._produce_latency = Histogram(
            "workers_billing_produce_latency_seconds",
            "From handing a batch of outcomes to the producer until Kafka acknowledged the last.",
            ("worker",),
            buckets=_PRODUCE_LATENCY_BUCKETS,
            registry=registry,
        ).labels(worker)
        self._produce_retries = Counter(
            "workers_billing_produce_retries_total",
            "Outcomes produced again after a retriable delivery error, by librdkafka error.",
            ("worker", "error"),
            registry=registry,
        )
        self._in_flight = Gauge(
            "workers_billing_outcomes_in_flight",
            "Outcomes handed to the producer and not acknowledged yet.",
            ("worker",),
            multiprocess_mode="livesum",
            registry=registry,
        ).labels(worker)
        self._checks = Counter(
            "workers_billing_custom_metric_checks_total",
            "Custom-metric projects checked for the first-custom-metric flag, by result.",
            ("worker", "result"),
            registry=registry,
        )
        self._flags_set = Counter(
            "workers_billing_flags_set_total",
            "Projects whose has_custom_metrics flag this worker set (one analytics event each).",
            ("worker",),
            registry=registry,
        ).labels(worker)
        self._flag_errors = Counter(
            "workers_billing_flag_errors_total",
            "Failed attempts of the flag work, retried with backoff, by store.",
            ("worker", "store"),
            registry=registry,
        )
        self._init_transaction_metrics(registry, worker)
        for result in CHECK_RESULTS:
            self._checks.labels(worker, result)
        self._flags_set.inc(0)
        self._category_labels: dict[int, str] = {}
        self._lock = threading.Lock()

    def _init_transaction_metrics(self, registry: CollectorRegistry, worker: str) -> None:
        self._committed = Counter(
            "workers_billing_transactions_committed_total",
            "Kafka transactions committed (outcomes, DLQ copies and input offsets together).",
            ("worker",),
            registry=registry,
        ).labels(worker)
        self._commit_latency = Histogram(
            "workers_billing_transaction_commit_seconds",
            "Time the commit of a transaction took: send_offsets_to_transaction and "
            "commit_transaction.",
            ("worker",),
            buckets=_COMMIT_LATENCY_BUCKETS,
            registry=registry,
        ).labels(worker)
        self._open_time = Histogram(
            "workers_billing_transaction_open_seconds",
            "From a transaction's first produce until it was committed.",
            ("worker",),
            buckets=_OPEN_TIME_BUCKETS,
            registry=registry,
        ).labels(worker)
        self._transaction_size = Histogram(
            "workers_billing_transaction_size_messages",
            "Messages (outcomes and DLQ copies) produced per committed transaction.",
            ("worker",),
            buckets=_TRANSACTION_SIZE_BUCKETS,
            registry=registry,
        ).labels(worker)
        aborted = Counter(
            "workers_billing_transactions_aborted_total",
            "Kafka transactions aborted (their input is processed again), by reason.",
            ("worker", "reason"),
            registry=registry,
        )
        self._aborted = {reason: aborted.labels(worker, reason) for reason in ABORT_REASONS}
        self._fenced = Counter(
            "workers_billing_producer_fenced_total",
            "Times a newer producer with the same transactional id, or the group coordinator, "
            "fenced this process's transactional producer.",
            ("worker",),
            registry=registry,
        ).labels(worker)
        self._committed.inc(0)
        self._fenced.inc(0)

    def transaction_committed(
        self, commit_seconds: float, open_seconds: float, outcomes: int
    ) -> None:
        """A transaction committed: the commit's duration, the time since its first produce,
        and the messages it carried (outcomes plus DLQ copies)."""
        self._committed.inc()
        self._commit_latency.observe(commit_seconds)
        self._open_time.observe(open_seconds)
        self._transaction_size.observe(outcomes)

    def transaction_aborted(self, reason: str) -> None:
        """A transaction was aborted; `reason` is one of `ABORT_REASONS` (else ValueError)."""
        counter = self._aborted.get(reason)
        if counter is None:
            raise ValueError(f"unknown abort reason {reason!r}; expected one of {ABORT_REASONS}")
        counter.inc()

    def producer_fenced(self) -> None:
        self._fenced.inc()

    def _category(self, category: int) -> str:
        label = self._category_labels.get(category)
        if label is None:
            label = self._category_labels[category] = category_label(category)
        return label

    def messages(self, metric_type: str, use_case: str, n: int) -> None:
        self._messages.labels(self.worker, metric_type, use_case).inc(n)

    def billable(self, category: int, n: int) -> None:
        self._billable.labels(self.worker, self._category(category)).inc(n)

    def acknowledged(self, category: int, outcomes: int, quantity: int) -> None:
        label = self._category(category)
        self._outcomes.labels(self.worker, label).inc(outcomes)
        self._quantity.labels(self.worker, label).inc(quantity)

    def observe_produce_latency(self, seconds: float) -> None:
        self._produce_latency.observe(seconds)

    def produce_retry(self, error: str, n: int = 1) -> None:
        self._produce_retries.labels(self.worker, error).inc(n)

    def set_in_flight(self, outcomes: int) -> None:
        self._in_flight.set(outcomes)

    def custom_metric_checks(self, result: str, n: int = 1) -> None:
        if n:
            self._checks.labels(self.worker, result).inc(n)

    def flags_set(self, n: int) -> None:
        if n:
            self._flags_set.inc(n)

    def flag_error(self, store: str) -> None:
        self._flag_errors.labels(self.worker, store).inc()


class BillingTally:
    """Hot-path counters of the billing chain; `flush()` moves the deltas into the metrics.

    Only the consumer thread touches it (the flag writer records its results directly).
    """

    __slots__ = (
        "_billing",
        "_count",
        "_decode",
        "_flag",
        "_flush_interval",
        "_last_flush",
        "_produce",
        "acknowledged",
        "billable",
        "billable_by_category",
        "by_type_use_case",
        "decoded",
        "flag_submitted",
        "outcomes_by_category",
        "process_cache_hits",
        "produced",
        "quantity_by_category",
    )

    def __init__(
        self,
        metrics: MetricsSource,
        billing: BillingMetrics | None = None,
        flush_interval_seconds: float = DEFAULT_FLUSH_INTERVAL_SECONDS,
    ) -> None:
        self._decode = metrics.step(DECODE_STEP)
        self._count = metrics.step(COUNT_STEP)
        self._produce = metrics.step(PRODUCE_STEP)
        self._flag = metrics.step(FLAG_STEP)
        self._billing = billing if billing is not None else BillingMetrics(metrics.registry)
        self._flush_interval = flush_interval_seconds
        self._last_flush = time.monotonic()
        # Deltas since the last flush.
        self.decoded = 0
        self.billable = 0
        self.produced = 0
        self.acknowledged = 0
        self.process_cache_hits = 0
        self.flag_submitted = 0
        self.by_type_use_case: dict[tuple[str, str], int] = {}
        self.billable_by_category: dict[int, int] = {}
        # Running totals for the life of the tally (acknowledged outcomes only).
        self.outcomes_by_category: dict[int, int] = {}
        self.quantity_by_category: dict[int, int] = {}

    @property
    def billing(self) -> BillingMetrics:
        return self._billing

    @property
    def flag_step(self) -> StepRecorder:
        """The `flag` step; its `out` is recorded by the flag writer when a check finishes."""
        return self._flag

    def count_types(self, by_type: Mapping[str, dict[str, int]]) -> None:
        """Add `{metric_type: {use_case_id: buckets}}`; unknown use cases count as `other`.

        The translate step counts into these nested tables (no key tuple per bucket) and
        hands them over when it closes a batch; the tables are emptied here.
        """
        counts = self.by_type_use_case
        for metric_type, by_use_case in by_type.items():
            for use_case, n in by_use_case.items():
                key = (metric_type, use_case if use_case in KNOWN_USE_CASES else OTHER_USE_CASE)
                counts[key] = counts.get(key, 0) + n
            by_use_case.clear()

    def invalid(self, code: str) -> None:
        """A message was rejected (rare): recorded at once, with its reason code."""
        self._decode.message_in()
        self._decode.invalid(code)

    def outcomes_acknowledged(self, by_category: Mapping[int, list[int]]) -> None:
        """A batch of outcomes was acknowledged: `{category: [outcomes, quantity]}`."""
        billing = self._billing
        for category, (outcomes, quantity) in by_category.items():
            self.acknowledged += outcomes
            self.outcomes_by_category[category] = (
                self.outcomes_by_category.get(category, 0) + outcomes
            )
            self.quantity_by_category[category] = (
                self.quantity_by_category.get(category, 0) + quantity
            )
            billing.acknowledged(category, outcomes, quantity)

    def observe_decode_latency(self, seconds: float) -> None:
        self._decode.observe_latency(seconds)

    def maybe_flush(self, now: float) -> None:
        """Flush when the interval has passed; `now` is `time.monotonic()`."""
        if now - self._last_flush >= self._flush_interval:
            self._last_flush = now
            self.flush()

    def flush(self) -> None:
        decoded, self.decoded = self.decoded, 0
        billable, self.billable = self.billable, 0
        produced, self.produced = self.produced, 0
        acknowledged, self.acknowledged = self.acknowledged, 0
        cache_hits, self.process_cache_hits = self.process_cache_hits, 0
        submitted, self.flag_submitted = self.flag_submitted, 0
        by_type, self.by_type_use_case = self.by_type_use_case, {}
        by_category, self.billable_by_category = self.billable_by_category, {}
        if decoded:
            self._decode.message_in(decoded)
            self._decode.message_out(decoded)
            self._count.message_in(decoded)
        if billable:
            self._count.message_out(billable)
        if produced:
            self._produce.message_in(produced)
        if acknowledged:
            self._produce.message_out(acknowledged)
        if submitted:
            self._flag.message_in(submitted)
        billing = self._billing
        if cache_hits:
            billing.custom_metric_checks(CHECK_PROCESS_CACHE, cache_hits)
        for (metric_type, use_case), n in by_type.items():
            billing.messages(metric_type, use_case, n)
        for category, n in by_category.items():
            billing.billable(category, n)

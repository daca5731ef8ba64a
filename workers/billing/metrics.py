"""The billing worker's own Prometheus series (`BillingMetrics`). The hot path does not touch
them directly: it bumps a `tally.BillingTally`, flushed about once a second.

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
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from workers.billing.counting import DataCategory

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

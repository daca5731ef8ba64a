"""The billing worker's hot-path tallies, flushed into its metrics about once a second.

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
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Final, Protocol

from prometheus_client import CollectorRegistry

from workers.billing.metrics import CHECK_PROCESS_CACHE, BillingMetrics

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

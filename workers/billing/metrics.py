"""The billing chain's per-step metrics, tallied in plain ints and flushed about once a second.

A Prometheus `Counter.inc` takes a lock (a few hundred ns); at ~100k msg/s and several
counters per message that is a large share of the budget, so the strategies bump integer
attributes of a `BillingTally` and the head of the chain flushes them into the fleet's
`FleetMetrics` steps from `poll()` once a second and on `join()`.

Steps (all `workers_step_*` series with `worker="billing"`):

- `decode`: in = every message, out = valid buckets, invalid by reason code;
- `count`: in = valid buckets, out = billable buckets (one outcome each);
- `produce`: in = outcomes handed to the producer, out = outcomes acknowledged by Kafka.

`decode` latency is sampled: one message in `LATENCY_SAMPLE_EVERY` is timed.
The outcome totals per data category (outcomes and quantity) are tallied here too
(`outcomes_by_category`, `quantity_by_category`): `FleetMetrics` has no series for them yet.
"""

from __future__ import annotations

import time
from typing import Final, Protocol


class StepRecorder(Protocol):
    """What the billing worker needs of `workers.common.metrics.StepMetrics`."""

    def message_in(self, n: int = 1) -> None: ...

    def message_out(self, n: int = 1) -> None: ...

    def invalid(self, reason: str, n: int = 1) -> None: ...

    def observe_latency(self, seconds: float) -> None: ...


class MetricsSource(Protocol):
    """What the billing worker needs of `workers.common.metrics.FleetMetrics`."""

    def step(self, name: str) -> StepRecorder: ...


DECODE_STEP: Final = "decode"
COUNT_STEP: Final = "count"
PRODUCE_STEP: Final = "produce"

#: Time one message in this many (a power of two) for the `decode` latency histogram.
LATENCY_SAMPLE_EVERY: Final = 256
DEFAULT_FLUSH_INTERVAL_SECONDS: Final = 1.0


class BillingTally:
    """Hot-path counters of one chain; `flush()` moves the deltas into the fleet metrics."""

    __slots__ = (
        "_count",
        "_decode",
        "_flush_interval",
        "_last_flush",
        "_produce",
        "acknowledged",
        "billable",
        "decoded",
        "outcomes_by_category",
        "produced",
        "quantity_by_category",
    )

    def __init__(
        self,
        metrics: MetricsSource,
        flush_interval_seconds: float = DEFAULT_FLUSH_INTERVAL_SECONDS,
    ) -> None:
        self._decode = metrics.step(DECODE_STEP)
        self._count = metrics.step(COUNT_STEP)
        self._produce = metrics.step(PRODUCE_STEP)
        self._flush_interval = flush_interval_seconds
        self._last_flush = time.monotonic()
        # Deltas since the last flush.
        self.decoded = 0
        self.billable = 0
        self.produced = 0
        self.acknowledged = 0
        # Running totals for the life of the tally (not flushed anywhere yet).
        self.outcomes_by_category: dict[int, int] = {}
        self.quantity_by_category: dict[int, int] = {}

    def invalid(self, code: str) -> None:
        """A message was rejected (rare): recorded at once, with its reason code."""
        self._decode.message_in()
        self._decode.invalid(code)

    def outcome(self, category: int, quantity: int) -> None:
        self.outcomes_by_category[category] = self.outcomes_by_category.get(category, 0) + 1
        self.quantity_by_category[category] = self.quantity_by_category.get(category, 0) + quantity

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

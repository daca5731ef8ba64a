"""How an Arroyo metric becomes a Prometheus metric: `MetricKind` and `ArroyoMetricSpec`.

Conversion rules:

- `increment` counters → Prometheus counters, `_total`.
- `arroyo.consumer.*.time` are seconds *summed* over about one-second windows by Arroyo's
  `MetricsBuffer` → counters of seconds (`..._seconds_total`): `rate()` of one is the fraction
  of wall time the loop spends in that phase. A histogram of window sums would be meaningless.
- Real durations (`timing` of a single operation, in seconds in every Python call site) →
  histograms in seconds.
- Sizes in messages/bytes sent through `timing` → histograms `_messages` / `_bytes`.
- Gauges stay gauges, converted to base units: librdkafka p99 latencies arrive in
  milliseconds (`p99 µs / 1000`) and become `_seconds`.
- librdkafka's *cumulative* totals that Arroyo reports through `gauge` (requests, bytes,
  errors, retries, (dis)connects, timeouts, transmitted messages) become counters: each
  report increments the counter by the difference to the previous report of that series (a
  smaller value means a new librdkafka client, and counts from zero), so `rate()` works and
  the values add up across processes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal, TypeAlias

GaugeMode: TypeAlias = Literal["livesum", "livemax", "livemin", "liveall", "livemostrecent"]


class MetricKind(enum.Enum):
    COUNTER = "counter"
    """`increment(n)` → `Counter.inc(n)`."""
    SECONDS_COUNTER = "seconds_counter"
    """`timing(seconds summed over a window)` → `Counter.inc(seconds)`."""
    HISTOGRAM = "histogram"
    """`timing(value)` → `Histogram.observe(value * scale)`."""
    GAUGE = "gauge"
    """`gauge(value)` → `Gauge.set(value * scale)` (`increment` → `Gauge.inc`)."""
    CUMULATIVE = "cumulative"
    """`gauge(total since the client started)` → `Counter.inc(delta)`."""


@dataclass(frozen=True, slots=True)
class ArroyoMetricSpec:
    """How one Arroyo metric name is exported."""

    arroyo_name: str
    #: The sample name as scraped (counters include `_total`).
    prometheus_name: str
    kind: MetricKind
    #: Base unit the name ends with (`seconds`, `bytes`, `messages`), or "" for plain counts.
    unit: str
    #: Tags Arroyo passes for this name, in label order (after `worker`).
    labels: tuple[str, ...]
    help: str
    #: Factor from Arroyo's value to the base unit (0.001 for milliseconds).
    scale: float = 1.0
    buckets: tuple[float, ...] = ()
    #: Aggregation across processes in prometheus-client multiprocess mode (gauges only).
    multiprocess_mode: GaugeMode = "livesum"

    @property
    def family_name(self) -> str:
        """The metric family name (what prometheus-client registers; no `_total`)."""
        if self.kind in (MetricKind.COUNTER, MetricKind.SECONDS_COUNTER, MetricKind.CUMULATIVE):
            return self.prometheus_name.removesuffix("_total")
        return self.prometheus_name

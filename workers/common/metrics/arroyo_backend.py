"""Arroyo's `Metrics` backend: every call recorded into the Prometheus metric its
`ArroyoMetricSpec` (`arroyo_metric_specs.ARROYO_METRICS`) declares.

Never raises: unknown names (a newer Arroyo) are logged once and ignored, unknown tags are
dropped (debug log once per name and tag), missing tags become `""`, negative counter
increments are dropped, and anything else that fails is logged once per name.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Final, Literal, TypeAlias

from arroyo.utils.metric_defs import MetricName
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from workers.common.metrics._common import LogOnce
from workers.common.metrics.arroyo_metric_kinds import ArroyoMetricSpec, MetricKind
from workers.common.metrics.arroyo_metric_specs import ARROYO_METRICS

logger = logging.getLogger(__name__)

Method: TypeAlias = Literal["increment", "gauge", "timing"]

#: Cap on distinct label sets per Arroyo metric; further ones are dropped (logged once).
DEFAULT_MAX_SERIES_PER_METRIC: Final = 1000


class _Series(abc.ABC):
    """One labelled child; `record` applies one Arroyo call to it."""

    __slots__ = ("scale",)

    def __init__(self, scale: float) -> None:
        self.scale = scale

    @abc.abstractmethod
    def record(self, value: float, method: Method) -> bool:
        """Apply the value; False if it was rejected (a negative counter increment)."""


class _CounterSeries(_Series):
    __slots__ = ("child",)

    def __init__(self, child: Counter, scale: float) -> None:
        super().__init__(scale)
        self.child = child

    def record(self, value: float, method: Method) -> bool:
        if value < 0:
            return False
        self.child.inc(value * self.scale)
        return True


class _CumulativeSeries(_Series):
    """A librdkafka running total reported as a gauge, exported as a counter."""

    __slots__ = ("child", "last_total", "lock")

    def __init__(self, child: Counter, scale: float) -> None:
        super().__init__(scale)
        self.child = child
        self.last_total: float | None = None
        self.lock = threading.Lock()

    def record(self, value: float, method: Method) -> bool:
        if method == "increment":
            if value < 0:
                return False
            self.child.inc(value * self.scale)
            return True
        with self.lock:
            last = self.last_total
            self.last_total = value
        # First report, or a total that went down (a new librdkafka client): count from zero.
        delta = value if last is None or value < last else value - last
        if delta > 0:
            self.child.inc(delta * self.scale)
        return True


class _GaugeSeries(_Series):
    __slots__ = ("child",)

    def __init__(self, child: Gauge, scale: float) -> None:
        super().__init__(scale)
        self.child = child

    def record(self, value: float, method: Method) -> bool:
        if method == "increment":
            self.child.inc(value * self.scale)
        else:
            self.child.set(value * self.scale)
        return True


class _HistogramSeries(_Series):
    __slots__ = ("child",)

    def __init__(self, child: Histogram, scale: float) -> None:
        super().__init__(scale)
        self.child = child

    def record(self, value: float, method: Method) -> bool:
        # Durations and sizes are never negative; a clock step could make an age negative.
        self.child.observe(max(value * self.scale, 0.0))
        return True


class _Exported:
    """A declared metric and its caches of labelled series."""

    __slots__ = ("by_labels", "by_tags", "label_set", "make_series", "spec", "untagged")

    def __init__(self, spec: ArroyoMetricSpec, registry: CollectorRegistry, worker: str) -> None:
        self.spec = spec
        self.label_set = frozenset(spec.labels)
        self.make_series = _series_factory(spec, registry, worker)
        empty = ("",) * len(spec.labels)
        # The series with every tag empty, for calls without tags.
        self.untagged = self.make_series(empty)
        # Label values (after dropping/filling tags) → series: bounds the cardinality.
        self.by_labels: dict[tuple[str, ...], _Series] = {empty: self.untagged}
        # Tags exactly as Arroyo passed them (items in call order) → series: the fast path.
        self.by_tags: dict[tuple[tuple[str, str], ...], _Series] = {}


def _series_factory(
    spec: ArroyoMetricSpec, registry: CollectorRegistry, worker: str
) -> Callable[[tuple[str, ...]], _Series]:
    labelnames = ("worker", *spec.labels)
    documentation = f"{spec.help} (Arroyo: {spec.arroyo_name})"
    name, unit, scale = spec.family_name, spec.unit, spec.scale
    if spec.kind is MetricKind.HISTOGRAM:
        histogram = Histogram(
            name, documentation, labelnames, unit=unit, registry=registry, buckets=spec.buckets
        )
        return lambda values: _HistogramSeries(histogram.labels(worker, *values), scale)
    if spec.kind is MetricKind.GAUGE:
        gauge = Gauge(
            name,
            documentation,
            labelnames,
            unit=unit,
            registry=registry,
            multiprocess_mode=spec.multiprocess_mode,
        )
        return lambda values: _GaugeSeries(gauge.labels(worker, *values), scale)
    counter = Counter(name, documentation, labelnames, unit=unit, registry=registry)
    if spec.kind is MetricKind.CUMULATIVE:
        return lambda values: _CumulativeSeries(counter.labels(worker, *values), scale)
    return lambda values: _CounterSeries(counter.labels(worker, *values), scale)


class ArroyoPrometheusBackend:
    """Arroyo `Metrics` backend writing to Prometheus metrics in `registry`.

    Install once per process with
    `arroyo.utils.metrics.configure_metrics(ArroyoPrometheusBackend(registry, worker), force=True)`
    (Arroyo keeps it in a module global; a second backend on the same registry raises
    `ValueError: Duplicated timeseries`). Thread-safe: Arroyo calls it from the consumer
    loop, librdkafka callbacks, the producer thread and the stuck detector.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        worker: str,
        *,
        max_series_per_metric: int = DEFAULT_MAX_SERIES_PER_METRIC,
    ) -> None:
        self._worker = worker
        self._max_series = max_series_per_metric
        self._log_once = LogOnce(logger)
        self._exported: dict[str, _Exported] = {
            spec.arroyo_name: _Exported(spec, registry, worker) for spec in ARROYO_METRICS
        }

    @property
    def worker(self) -> str:
        return self._worker

    def increment(
        self,
        name: MetricName,
        value: int | float = 1,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self._record(name, value, tags, "increment")

    def gauge(
        self, name: MetricName, value: int | float, tags: Mapping[str, str] | None = None
    ) -> None:
        self._record(name, value, tags, "gauge")

    def timing(
        self, name: MetricName, value: int | float, tags: Mapping[str, str] | None = None
    ) -> None:
        self._record(name, value, tags, "timing")

    def _record(
        self, name: str, value: float, tags: Mapping[str, str] | None, method: Method
    ) -> None:
        try:
            exported = self._exported.get(name)
            if exported is None:
                self._log_once(
                    ("unknown-name", name),
                    logging.WARNING,
                    "Arroyo metric %r is not in the Prometheus table; ignored",
                    name,
                )
                return
            if tags:
                key = tuple(tags.items())
                series = exported.by_tags.get(key)
                if series is None:
                    series = self._resolve(exported, tags, key)
                    if series is None:
                        return
            else:
                series = exported.untagged
            if not series.record(value, method):
                self._log_once(
                    ("rejected", name),
                    logging.DEBUG,
                    "value %r for Arroyo counter %r dropped (negative)",
                    value,
                    name,
                )
        except Exception:
            self._log_once(
                ("error", name),
                logging.ERROR,
                "recording Arroyo metric %r failed",
                name,
                exc_info=True,
            )

    def _resolve(
        self,
        exported: _Exported,
        tags: Mapping[str, str],
        key: tuple[tuple[str, str], ...],
    ) -> _Series | None:
        spec = exported.spec
        for tag in tags:
            if tag not in exported.label_set:
                self._log_once(
                    ("unknown-tag", spec.arroyo_name, tag),
                    logging.DEBUG,
                    "tag %r of Arroyo metric %r is not a label; dropped",
                    tag,
                    spec.arroyo_name,
                )
        values = tuple(str(tags.get(label, "")) for label in spec.labels)
        series = exported.by_labels.get(values)
        if series is None:
            if len(exported.by_labels) >= self._max_series:
                self._log_once(
                    ("too-many-series", spec.arroyo_name),
                    logging.WARNING,
                    "Arroyo metric %r reached %d label sets; new ones are dropped",
                    spec.arroyo_name,
                    self._max_series,
                )
                return None
            series = exported.make_series(values)
            exported.by_labels[values] = series
        if len(exported.by_tags) < self._max_series:
            exported.by_tags[key] = series
        return series

"""Arroyo's metrics as Prometheus metrics: the name table and the `Metrics` backend.

`ARROYO_METRICS` declares, for every name in `arroyo.utils.metric_defs.MetricName`, the
Prometheus name, type, unit, labels and help text. The labels are the tags Arroyo really
passes for that name (read from the sentry-arroyo 2.48 source; the `broker_*`, `txmsgs` and
`broker_state` names are only emitted by Arroyo's Rust port and are declared with the tags it
uses there), plus a constant `worker` label first.

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

Never raises: unknown names (a newer Arroyo) are logged once and ignored, unknown tags are
dropped (debug log once per name and tag), missing tags become `""`, negative counter
increments are dropped, and anything else that fails is logged once per name.
"""

from __future__ import annotations

import abc
import enum
import logging
import threading
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from arroyo.utils.metric_defs import MetricName
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from workers.common.metrics._common import (
    AGE_BUCKETS,
    BYTE_BUCKETS,
    DURATION_BUCKETS,
    MESSAGE_COUNT_BUCKETS,
    LogOnce,
)

logger = logging.getLogger(__name__)

GaugeMode: TypeAlias = Literal["livesum", "livemax", "livemin", "liveall", "livemostrecent"]
Method: TypeAlias = Literal["increment", "gauge", "timing"]

#: Cap on distinct label sets per Arroyo metric; further ones are dropped (logged once).
DEFAULT_MAX_SERIES_PER_METRIC: Final = 1000
_MS: Final = 0.001


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


_PRODUCER: Final = ("producer_name",)
_BROKER: Final = ("broker_id", "producer_name")
_MP: Final = "arroyo.strategies.run_task_with_multiprocessing"
_MP_PROM: Final = "arroyo_strategies_run_task_with_multiprocessing"
_RDK: Final = "arroyo.producer.librdkafka"
_RDK_PROM: Final = "arroyo_producer_librdkafka"


def _counter(arroyo: str, prom: str, help: str, labels: tuple[str, ...] = ()) -> ArroyoMetricSpec:
    return ArroyoMetricSpec(arroyo, prom, MetricKind.COUNTER, "", labels, help)


def _loop_seconds(phase: str, help: str) -> ArroyoMetricSpec:
    return ArroyoMetricSpec(
        f"arroyo.consumer.{phase}.time",
        f"arroyo_consumer_{phase}_seconds_total",
        MetricKind.SECONDS_COUNTER,
        "seconds",
        (),
        f"Seconds the consumer loop spent {help} (rate() = fraction of wall time).",
    )


def _histogram(
    arroyo: str,
    prom: str,
    unit: str,
    buckets: tuple[float, ...],
    help: str,
    labels: tuple[str, ...] = (),
) -> ArroyoMetricSpec:
    return ArroyoMetricSpec(arroyo, prom, MetricKind.HISTOGRAM, unit, labels, help, buckets=buckets)


def _gauge(
    arroyo: str,
    prom: str,
    help: str,
    labels: tuple[str, ...] = (),
    *,
    unit: str = "",
    scale: float = 1.0,
    mode: GaugeMode = "livesum",
) -> ArroyoMetricSpec:
    return ArroyoMetricSpec(
        arroyo, prom, MetricKind.GAUGE, unit, labels, help, scale=scale, multiprocess_mode=mode
    )


def _cumulative(
    arroyo: str, prom: str, help: str, labels: tuple[str, ...], *, unit: str = ""
) -> ArroyoMetricSpec:
    return ArroyoMetricSpec(arroyo, prom, MetricKind.CUMULATIVE, unit, labels, help)


ARROYO_METRICS: Final[tuple[ArroyoMetricSpec, ...]] = (
    # --- StreamProcessor loop (processor.py) -------------------------------------------
    _counter("arroyo.consumer.run.count", "arroyo_consumer_run_total", "Loop iterations."),
    _counter(
        "arroyo.consumer.invalid_message.count",
        "arroyo_consumer_invalid_message_total",
        "InvalidMessage exceptions handled by the loop.",
    ),
    _loop_seconds("poll", "polling librdkafka"),
    _loop_seconds("processing", "in strategy submit/poll"),
    _loop_seconds("backpressure", "in backpressure (MessageRejected)"),
    _loop_seconds("dlq", "handling InvalidMessage and producing to the DLQ"),
    _loop_seconds("join", "joining the strategy (shutdown or rebalance)"),
    _loop_seconds("callback", "in rebalance callbacks (overlaps join/dlq)"),
    _loop_seconds("shutdown", "closing strategies (overlaps join)"),
    _histogram(
        "arroyo.consumer.run.callback",
        "arroyo_consumer_run_callback_seconds",
        "seconds",
        DURATION_BUCKETS,
        "Duration of one rebalance callback.",
        ("callback_name",),
    ),
    _histogram(
        "arroyo.consumer.run.close_strategy",
        "arroyo_consumer_run_close_strategy_seconds",
        "seconds",
        DURATION_BUCKETS,
        "Duration of closing and joining the strategy.",
    ),
    _histogram(
        "arroyo.consumer.run.create_strategy",
        "arroyo_consumer_run_create_strategy_seconds",
        "seconds",
        DURATION_BUCKETS,
        "Duration of creating the strategy.",
    ),
    _counter(
        "arroyo.consumer.partitions_revoked.count",
        "arroyo_consumer_partitions_revoked_total",
        "Partitions revoked from this consumer.",
    ),
    _counter(
        "arroyo.consumer.partitions_assigned.count",
        "arroyo_consumer_partitions_assigned_total",
        "Partitions assigned to this consumer.",
    ),
    _counter("arroyo.consumer.pause", "arroyo_consumer_pause_total", "Consumer pauses."),
    _counter("arroyo.consumer.resume", "arroyo_consumer_resume_total", "Consumer resumes."),
    _counter(
        "arroyo.consumer.stuck",
        "arroyo_consumer_stuck_total",
        "Times the stuck detector found the loop stuck.",
    ),
    _counter(
        "arroyo.consumer.dlq.dropped_messages",
        "arroyo_consumer_dlq_dropped_messages_total",
        "Invalid messages dropped because producing to the DLQ failed.",
    ),
    # --- CommitOffsets (commit.py) ----------------------------------------------------
    _histogram(
        "arroyo.consumer.latency",
        "arroyo_consumer_latency_seconds",
        "seconds",
        AGE_BUCKETS,
        "Message timestamp to commit, sampled at most once a second per strategy.",
    ),
    # --- KafkaConsumer (backends/kafka) ------------------------------------------------
    _gauge(
        "arroyo.consumer.librdkafka.total_queue_size",
        "arroyo_consumer_librdkafka_total_queue_size",
        "librdkafka consumer `replyq`: ops waiting in the reply queue.",
    ),
    _counter(
        "arroyo.consumer.commit_status",
        "arroyo_consumer_commit_status_total",
        "Offset commit results.",
        ("status", "group_id"),
    ),
    # --- DLQ buffer (dlq.py) -----------------------------------------------------------
    _gauge(
        "arroyo.consumer.dlq_buffer.len",
        "arroyo_consumer_dlq_buffer_messages",
        "Raw messages buffered for the DLQ, per partition.",
        ("partition_index",),
        unit="messages",
    ),
    _counter(
        "arroyo.consumer.dlq_buffer.exceeded",
        "arroyo_consumer_dlq_buffer_exceeded_total",
        "Messages evicted because the DLQ buffer of a partition was full.",
        ("partition_id",),
    ),
    _gauge(
        "arroyo.consumer.dlq_buffer.assigned_partitions",
        "arroyo_consumer_dlq_buffer_assigned_partitions",
        "Partitions tracked by the DLQ buffer.",
    ),
    # --- Strategies --------------------------------------------------------------------
    _histogram(
        "arroyo.strategies.reduce.batch_time",
        "arroyo_strategies_reduce_batch_time_seconds",
        "seconds",
        DURATION_BUCKETS,
        "Time Reduce took to fill a batch.",
        ("flush_reason",),
    ),
    _counter(
        "arroyo.strategies.filter.dropped_messages",
        "arroyo_strategies_filter_dropped_messages_total",
        "Messages dropped by FilterStep.",
    ),
    _counter(
        "arroyo.processing.strategies.healthcheck.touch",
        "arroyo_processing_strategies_healthcheck_touch_total",
        "Healthcheck file touches.",
    ),
    _counter(
        "arroyo.strategies.run_task.join.backpressure",
        "arroyo_strategies_run_task_join_backpressure_total",
        "Backpressure hits during RunTask join (better_backpressure).",
    ),
    _counter(
        "arroyo.strategies.buffer.join.backpressure",
        "arroyo_strategies_buffer_join_backpressure_total",
        "Backpressure hits during Buffer/Reduce join.",
    ),
    # --- RunTaskWithMultiprocessing ----------------------------------------------------
    _histogram(
        f"{_MP}.batch.size.msg",
        f"{_MP_PROM}_batch_size_messages",
        "messages",
        MESSAGE_COUNT_BUCKETS,
        "Messages per input batch.",
    ),
    _histogram(
        f"{_MP}.batch.size.bytes",
        f"{_MP_PROM}_batch_size_bytes",
        "bytes",
        BYTE_BUCKETS,
        "Bytes per input batch.",
    ),
    _histogram(
        f"{_MP}.batch.submit.time",
        f"{_MP_PROM}_batch_submit_seconds",
        "seconds",
        DURATION_BUCKETS,
        "Time to submit a batch to the pool.",
    ),
    _histogram(
        f"{_MP}.output_batch.size.msg",
        f"{_MP_PROM}_output_batch_size_messages",
        "messages",
        MESSAGE_COUNT_BUCKETS,
        "Messages per output batch.",
    ),
    _histogram(
        f"{_MP}.output_batch.size.bytes",
        f"{_MP_PROM}_output_batch_size_bytes",
        "bytes",
        BYTE_BUCKETS,
        "Bytes per output batch.",
    ),
    _counter(
        f"{_MP}.batch.backpressure",
        f"{_MP_PROM}_batch_backpressure_total",
        "Backpressure from the next step on multiprocessing output.",
    ),
    _counter(
        f"{_MP}.batch.input.overflow",
        f"{_MP_PROM}_batch_input_overflow_total",
        "Input batches cut short by a full input block.",
    ),
    _counter(
        f"{_MP}.batch.output.overflow",
        f"{_MP_PROM}_batch_output_overflow_total",
        "Output batches cut short by a full output block.",
    ),
    _counter(
        f"{_MP}.batch.input.resize",
        f"{_MP_PROM}_batch_input_resize_total",
        "Input block reallocations.",
    ),
    _counter(
        f"{_MP}.batch.output.resize",
        f"{_MP_PROM}_batch_output_resize_total",
        "Output block reallocations.",
    ),
    _gauge(
        f"{_MP}.batches_in_progress",
        f"{_MP_PROM}_batches_in_progress",
        "Batches being processed by the pool.",
    ),
    _gauge(f"{_MP}.processes", f"{_MP_PROM}_processes", "Processes in the pool."),
    _counter(
        f"{_MP}.pool.create",
        f"{_MP_PROM}_pool_create_total",
        "Pool (re)creations.",
    ),
    _counter(
        "sigchld.detected",
        "arroyo_sigchld_detected_total",
        "Pool subprocesses that died unexpectedly (SIGCHLD).",
    ),
    # --- Producer (backends/kafka, strategies/produce.py) ------------------------------
    _counter(
        "arroyo.producer.produce_status",
        "arroyo_producer_produce_status_total",
        "Produce results. The Produce strategy reports per message without producer_name; "
        "Arroyo's ConfluentProducer reports delivery callbacks with producer_name.",
        ("status", "code", "producer_name"),
    ),
    _histogram(
        "arroyo.producer.callback_latency",
        "arroyo_producer_callback_latency_seconds",
        "seconds",
        AGE_BUCKETS,
        "Produce call to delivery callback.",
        _PRODUCER,
    ),
    _counter(
        "arroyo.producer.worker.poll",
        "arroyo_producer_worker_poll_total",
        "Producer worker-thread polls (record_poll_metrics=True).",
        _PRODUCER,
    ),
    # --- librdkafka producer statistics (configuration.py; Rust for some) -------------
    _gauge(
        f"{_RDK}.p99_int_latency",
        f"{_RDK_PROM}_p99_int_latency_seconds",
        "p99 internal producer queue latency per broker.",
        _BROKER,
        unit="seconds",
        scale=_MS,
        mode="livemax",
    ),
    _gauge(
        f"{_RDK}.p99_outbuf_latency",
        f"{_RDK_PROM}_p99_outbuf_latency_seconds",
        "p99 broker output buffer latency.",
        _BROKER,
        unit="seconds",
        scale=_MS,
        mode="livemax",
    ),
    _gauge(
        f"{_RDK}.p99_rtt",
        f"{_RDK_PROM}_p99_rtt_seconds",
        "p99 broker round-trip time.",
        _BROKER,
        unit="seconds",
        scale=_MS,
        mode="livemax",
    ),
    _gauge(
        f"{_RDK}.message_count",
        f"{_RDK_PROM}_queue_messages",
        "Messages in the producer queue (msg_cnt).",
        _PRODUCER,
        unit="messages",
    ),
    _gauge(
        f"{_RDK}.message_count_max",
        f"{_RDK_PROM}_queue_max_messages",
        "Producer queue capacity in messages (msg_max).",
        _PRODUCER,
        unit="messages",
    ),
    _gauge(
        f"{_RDK}.message_size",
        f"{_RDK_PROM}_queue_bytes",
        "Bytes in the producer queue (msg_size).",
        _PRODUCER,
        unit="bytes",
    ),
    _gauge(
        f"{_RDK}.message_size_max",
        f"{_RDK_PROM}_queue_max_bytes",
        "Producer queue capacity in bytes (msg_size_max).",
        _PRODUCER,
        unit="bytes",
    ),
    _gauge(
        f"{_RDK}.reply_queue_size",
        f"{_RDK_PROM}_reply_queue_size",
        "Ops waiting in the producer reply queue (replyq).",
        _PRODUCER,
    ),
    _cumulative(
        f"{_RDK}.txmsgs",
        f"{_RDK_PROM}_tx_messages_total",
        "Messages transmitted to brokers.",
        _PRODUCER,
        unit="messages",
    ),
    _gauge(
        f"{_RDK}.broker_state",
        f"{_RDK_PROM}_broker_state",
        "1 for the broker connection's current state, 0 for the others.",
        (*_BROKER, "state"),
    ),
    _gauge(
        f"{_RDK}.broker_outbuf_requests",
        f"{_RDK_PROM}_broker_outbuf_requests",
        "Requests awaiting transmission to the broker.",
        _BROKER,
    ),
    _gauge(
        f"{_RDK}.broker_outbuf_messages",
        f"{_RDK_PROM}_broker_outbuf_messages",
        "Messages awaiting transmission to the broker.",
        _BROKER,
        unit="messages",
    ),
    _gauge(
        f"{_RDK}.broker_waitresp_requests",
        f"{_RDK_PROM}_broker_waitresp_requests",
        "Requests awaiting a broker response.",
        _BROKER,
    ),
    _cumulative(
        f"{_RDK}.broker_connects",
        f"{_RDK_PROM}_broker_connects_total",
        "Broker connection attempts.",
        _BROKER,
    ),
    _cumulative(
        f"{_RDK}.broker_disconnects",
        f"{_RDK_PROM}_broker_disconnects_total",
        "Broker disconnections.",
        _BROKER,
    ),
    _gauge(
        f"{_RDK}.broker_tx_idle",
        f"{_RDK_PROM}_broker_tx_idle_seconds",
        "Time since the last socket send.",
        _BROKER,
        unit="seconds",
        scale=_MS,
        mode="livemax",
    ),
    _gauge(
        f"{_RDK}.broker_rx_idle",
        f"{_RDK_PROM}_broker_rx_idle_seconds",
        "Time since the last socket receive.",
        _BROKER,
        unit="seconds",
        scale=_MS,
        mode="livemax",
    ),
    _cumulative(
        f"{_RDK}.broker_request_timeouts",
        f"{_RDK_PROM}_broker_request_timeouts_total",
        "Broker requests that timed out.",
        _BROKER,
    ),
    _cumulative(
        f"{_RDK}.broker_tx",
        f"{_RDK_PROM}_broker_tx_requests_total",
        "Requests sent to the broker.",
        _BROKER,
    ),
    _cumulative(
        f"{_RDK}.broker_txbytes",
        f"{_RDK_PROM}_broker_tx_bytes_total",
        "Bytes sent to the broker.",
        _BROKER,
        unit="bytes",
    ),
    _cumulative(
        f"{_RDK}.broker_txerrs",
        f"{_RDK_PROM}_broker_tx_errors_total",
        "Transmission errors.",
        _BROKER,
    ),
    _cumulative(
        f"{_RDK}.broker_txretries",
        f"{_RDK_PROM}_broker_tx_retries_total",
        "Request retries.",
        _BROKER,
    ),
)

#: `ARROYO_METRICS` by Arroyo name.
ARROYO_METRICS_BY_NAME: Final[Mapping[str, ArroyoMetricSpec]] = types.MappingProxyType(
    {spec.arroyo_name: spec for spec in ARROYO_METRICS}
)


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

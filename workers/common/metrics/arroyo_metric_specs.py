"""Arroyo's metrics as Prometheus metrics: the name table.

`ARROYO_METRICS` declares, for every name in `arroyo.utils.metric_defs.MetricName`, the
Prometheus name, type, unit, labels and help text. The labels are the tags Arroyo really
passes for that name (read from the sentry-arroyo 2.48 source; the `broker_*`, `txmsgs` and
`broker_state` names are only emitted by Arroyo's Rust port and are declared with the tags it
uses there), plus a constant `worker` label first. The conversion rules are
`MetricKind`'s (`arroyo_metric_kinds`); `arroyo_backend` records Arroyo's calls by them.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Final

from workers.common.metrics._common import (
    AGE_BUCKETS,
    BYTE_BUCKETS,
    DURATION_BUCKETS,
    MESSAGE_COUNT_BUCKETS,
)
from workers.common.metrics.arroyo_metric_kinds import ArroyoMetricSpec, GaugeMode, MetricKind

_MS: Final = 0.001
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

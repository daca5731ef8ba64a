"""Tests for `workers.common.metrics`: Arroyo backend, step metrics, lag, exposition."""

from __future__ import annotations

import json
import logging
import multiprocessing
import re
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import pytest
from arroyo.backends.kafka.configuration import producer_stats_callback, stats_callback
from arroyo.processing.processor import MetricsBuffer
from arroyo.utils.metric_defs import MetricName
from arroyo.utils.metrics import DummyMetricsBackend, Metrics, configure_metrics, get_metrics
from prometheus_client import CollectorRegistry

from workers.common.metrics import (
    ARROYO_METRICS,
    ARROYO_METRICS_BY_NAME,
    MULTIPROC_DIR_ENV,
    ArroyoMetricSpec,
    ArroyoPrometheusBackend,
    ConsumerLagReporter,
    FleetMetrics,
    MetricKind,
    mark_process_dead,
    multiprocess_active,
    multiprocess_registry,
    prepare_multiprocess_dir,
    sanitize_reason,
    start_metrics_server,
)

WORKER = "billing"

# --------------------------------------------------------------------------------------
# What sentry-arroyo 2.48 really passes for each name (read from its source; the librdkafka
# broker_*/txmsgs/broker_state names are emitted by Arroyo's Rust port with these tags).
# Each call: (method, value, tags, expected value in the Prometheus metric's base unit).
# --------------------------------------------------------------------------------------

Method = Literal["increment", "gauge", "timing"]


@dataclass(frozen=True)
class Call:
    method: Method
    value: float
    tags: Mapping[str, str] = field(default_factory=dict)
    expected: float | None = None  # None: same as value

    @property
    def expected_value(self) -> float:
        return self.value if self.expected is None else self.expected


MP = "arroyo.strategies.run_task_with_multiprocessing"
RDK = "arroyo.producer.librdkafka"
BROKER = {"broker_id": "127.0.0.1:19092/1", "producer_name": "billing-outcomes"}
PRODUCER = {"producer_name": "billing-outcomes"}

ARROYO_CALLS: dict[str, list[Call]] = {
    # StreamProcessor: MetricsBuffer flushes counters with `increment` and the loop timers
    # (seconds summed over ~1 s) with `timing`.
    **{
        name: [Call("increment", 3)]
        for name in (
            "arroyo.consumer.run.count",
            "arroyo.consumer.invalid_message.count",
            "arroyo.consumer.pause",
            "arroyo.consumer.resume",
            "arroyo.consumer.stuck",
            "arroyo.consumer.dlq.dropped_messages",
            "arroyo.consumer.partitions_revoked.count",
            "arroyo.consumer.partitions_assigned.count",
            "arroyo.processing.strategies.healthcheck.touch",
            "arroyo.strategies.filter.dropped_messages",
            "arroyo.strategies.run_task.join.backpressure",
            "arroyo.strategies.buffer.join.backpressure",
            f"{MP}.batch.backpressure",
            f"{MP}.batch.input.overflow",
            f"{MP}.batch.output.overflow",
            f"{MP}.batch.input.resize",
            f"{MP}.batch.output.resize",
            f"{MP}.pool.create",
            "sigchld.detected",
        )
    },
    **{
        f"arroyo.consumer.{phase}.time": [Call("timing", 0.25)]
        for phase in ("poll", "processing", "backpressure", "dlq", "join", "callback", "shutdown")
    },
    "arroyo.consumer.run.callback": [
        Call("timing", 0.5, {"callback_name": "on_partitions_assigned"}),
        Call("timing", 0.125, {"callback_name": "on_partitions_revoked"}),
    ],
    "arroyo.consumer.run.close_strategy": [Call("timing", 1.5)],
    "arroyo.consumer.run.create_strategy": [Call("timing", 0.002)],
    "arroyo.consumer.latency": [Call("timing", 0.75)],
    "arroyo.consumer.librdkafka.total_queue_size": [Call("gauge", 12)],
    "arroyo.consumer.commit_status": [
        Call("increment", 1, {"status": "success", "group_id": "billing"}),
        Call("increment", 1, {"status": "error", "group_id": "billing"}),
    ],
    "arroyo.consumer.dlq_buffer.len": [Call("gauge", 17, {"partition_index": "3"})],
    "arroyo.consumer.dlq_buffer.exceeded": [Call("increment", 1, {"partition_id": "3"})],
    "arroyo.consumer.dlq_buffer.assigned_partitions": [Call("gauge", 4)],
    "arroyo.strategies.reduce.batch_time": [
        Call("timing", 1.0, {"flush_reason": "time"}),
        Call("timing", 0.3, {"flush_reason": "size"}),
        Call("timing", 0.1, {"flush_reason": "force"}),
    ],
    f"{MP}.batch.size.msg": [Call("timing", 500)],
    f"{MP}.batch.size.bytes": [Call("timing", 65536)],
    f"{MP}.batch.submit.time": [Call("timing", 0.0004)],
    f"{MP}.output_batch.size.msg": [Call("timing", 480)],
    f"{MP}.output_batch.size.bytes": [Call("timing", 60000)],
    f"{MP}.batches_in_progress": [Call("gauge", 2)],
    f"{MP}.processes": [Call("gauge", 4)],
    # Produce strategy: {status} or {status, code}; ConfluentProducer: {status, producer_name}.
    "arroyo.producer.produce_status": [
        Call("increment", 1, {"status": "success"}),
        Call("increment", 1, {"status": "error", "code": "-192"}),
        Call("increment", 40, {"status": "success", "producer_name": "billing-outcomes"}),
    ],
    "arroyo.producer.callback_latency": [Call("timing", 0.02, PRODUCER)],
    "arroyo.producer.worker.poll": [Call("increment", 10, PRODUCER)],
    # librdkafka statistics: p99s are passed in milliseconds (µs / 1000).
    f"{RDK}.p99_int_latency": [Call("gauge", 1.5, BROKER, 0.0015)],
    f"{RDK}.p99_outbuf_latency": [Call("gauge", 3.75, BROKER, 0.00375)],
    f"{RDK}.p99_rtt": [Call("gauge", 12.5, BROKER, 0.0125)],
    f"{RDK}.message_count": [Call("gauge", 20, PRODUCER)],
    f"{RDK}.message_count_max": [Call("gauge", 100000, PRODUCER)],
    f"{RDK}.message_size": [Call("gauge", 2048, PRODUCER)],
    f"{RDK}.message_size_max": [Call("gauge", 1073741824, PRODUCER)],
    f"{RDK}.reply_queue_size": [Call("gauge", 3, PRODUCER)],
    f"{RDK}.txmsgs": [Call("gauge", 24, PRODUCER)],
    f"{RDK}.broker_state": [Call("gauge", 1, {**BROKER, "state": "UP"})],
    f"{RDK}.broker_outbuf_requests": [Call("gauge", 7, BROKER)],
    f"{RDK}.broker_outbuf_messages": [Call("gauge", 8, BROKER)],
    f"{RDK}.broker_waitresp_requests": [Call("gauge", 9, BROKER)],
    f"{RDK}.broker_connects": [Call("gauge", 10, BROKER)],
    f"{RDK}.broker_disconnects": [Call("gauge", 11, BROKER)],
    f"{RDK}.broker_tx_idle": [Call("gauge", 12, BROKER, 0.012)],
    f"{RDK}.broker_rx_idle": [Call("gauge", 13, BROKER, 0.013)],
    f"{RDK}.broker_request_timeouts": [Call("gauge", 14, BROKER)],
    f"{RDK}.broker_tx": [Call("gauge", 15, BROKER)],
    f"{RDK}.broker_txbytes": [Call("gauge", 16, BROKER)],
    f"{RDK}.broker_txerrs": [Call("gauge", 17, BROKER)],
    f"{RDK}.broker_txretries": [Call("gauge", 18, BROKER)],
}

PROMETHEUS_TYPE = {
    MetricKind.COUNTER: "counter",
    MetricKind.SECONDS_COUNTER: "counter",
    MetricKind.CUMULATIVE: "counter",
    MetricKind.GAUGE: "gauge",
    MetricKind.HISTOGRAM: "histogram",
}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def backend(registry: CollectorRegistry) -> Iterator[ArroyoPrometheusBackend]:
    backend = ArroyoPrometheusBackend(registry, WORKER)
    configure_metrics(backend, force=True)
    yield backend
    configure_metrics(DummyMetricsBackend(), force=True)


def family_types(registry: CollectorRegistry) -> dict[str, str]:
    return {family.name: family.type for family in registry.collect()}


def label_values(spec: ArroyoMetricSpec, tags: Mapping[str, str]) -> dict[str, str]:
    return {"worker": WORKER, **{label: tags.get(label, "") for label in spec.labels}}


# ---- the table ----------------------------------------------------------------------


def test_every_arroyo_metric_name_is_declared_once() -> None:
    names = set(get_args(MetricName))
    assert len(names) == 68
    assert set(ARROYO_METRICS_BY_NAME) == names
    assert len(ARROYO_METRICS) == len(names)
    assert set(ARROYO_CALLS) == names
    prometheus_names = [spec.prometheus_name for spec in ARROYO_METRICS]
    assert len(set(prometheus_names)) == len(prometheus_names)


@pytest.mark.parametrize("spec", ARROYO_METRICS, ids=lambda spec: spec.arroyo_name)
def test_prometheus_naming_rules(spec: ArroyoMetricSpec) -> None:
    name = spec.prometheus_name
    assert re.fullmatch(r"arroyo_[a-z0-9_]+[a-z0-9]", name)
    is_counter = PROMETHEUS_TYPE[spec.kind] == "counter"
    assert name.endswith("_total") == is_counter
    base = name.removesuffix("_total")
    if spec.unit:
        assert base.endswith(f"_{spec.unit}")
    for reserved in ("_count", "_sum", "_bucket", "_created", "_msg", "_ms"):
        assert not base.endswith(reserved)
    if spec.kind is MetricKind.SECONDS_COUNTER:
        assert spec.arroyo_name.endswith(".time")
        assert name.endswith("_seconds_total")
    if spec.kind is MetricKind.HISTOGRAM:
        assert spec.unit in ("seconds", "bytes", "messages")
        assert spec.buckets
    if spec.kind is MetricKind.GAUGE:
        assert spec.multiprocess_mode.startswith("live")
    # Offsets (unbounded) never become labels.
    assert not any("offset" in label for label in spec.labels)


@pytest.mark.parametrize("name", sorted(ARROYO_CALLS))
def test_labels_are_exactly_the_tags_arroyo_passes(name: str) -> None:
    passed = {tag for call in ARROYO_CALLS[name] for tag in call.tags}
    assert set(ARROYO_METRICS_BY_NAME[name].labels) == passed


# ---- the backend --------------------------------------------------------------------


def test_backend_is_an_arroyo_metrics_backend(backend: ArroyoPrometheusBackend) -> None:
    assert isinstance(backend, Metrics)
    assert get_metrics() is backend


@pytest.mark.parametrize("name", sorted(ARROYO_CALLS))
def test_each_arroyo_call_produces_a_converted_sample(
    registry: CollectorRegistry, backend: ArroyoPrometheusBackend, name: str
) -> None:
    spec = ARROYO_METRICS_BY_NAME[name]
    for call in ARROYO_CALLS[name]:
        getattr(backend, call.method)(name, call.value, tags=call.tags)
    assert family_types(registry)[spec.family_name] == PROMETHEUS_TYPE[spec.kind]
    for call in ARROYO_CALLS[name]:
        labels = label_values(spec, call.tags)
        if spec.kind is MetricKind.HISTOGRAM:
            assert registry.get_sample_value(f"{spec.prometheus_name}_count", labels) == 1
            total = registry.get_sample_value(f"{spec.prometheus_name}_sum", labels)
            assert total == pytest.approx(call.expected_value)
        else:
            value = registry.get_sample_value(spec.prometheus_name, labels)
            assert value == pytest.approx(call.expected_value)


def test_loop_timer_adds_seconds_to_a_counter(
    registry: CollectorRegistry, backend: ArroyoPrometheusBackend
) -> None:
    backend.timing("arroyo.consumer.poll.time", 0.25)
    backend.timing("arroyo.consumer.poll.time", 0.5)
    labels = {"worker": WORKER}
    assert registry.get_sample_value("arroyo_consumer_poll_seconds_total", labels) == 0.75


def test_cumulative_librdkafka_totals_become_counter_deltas(
    registry: CollectorRegistry, backend: ArroyoPrometheusBackend
) -> None:
    name = "arroyo_producer_librdkafka_broker_tx_bytes_total"
    labels = {"worker": WORKER, **BROKER}
    for total in (100, 150, 150):
        backend.gauge("arroyo.producer.librdkafka.broker_txbytes", total, tags=BROKER)
    assert registry.get_sample_value(name, labels) == 150
    # A smaller total is a new librdkafka client counting from zero.
    backend.gauge("arroyo.producer.librdkafka.broker_txbytes", 20, tags=BROKER)
    assert registry.get_sample_value(name, labels) == 170


def test_real_arroyo_code_paths_feed_the_backend(
    registry: CollectorRegistry, backend: ArroyoPrometheusBackend
) -> None:
    buffer = MetricsBuffer()
    buffer.incr_timing("arroyo.consumer.processing.time", 0.125)
    buffer.incr_counter("arroyo.consumer.run.count", 5)
    buffer.flush()
    stats_callback(json.dumps({"replyq": 9}))
    producer_stats = {
        "replyq": 1,
        "msg_cnt": 3,
        "msg_size": 300,
        "msg_max": 100000,
        "msg_size_max": 1073741824,
        "brokers": {
            "127.0.0.1:19092/1": {
                "int_latency": {"p99": 2500},
                "outbuf_latency": {"p99": 500},
                "rtt": {"p99": 1200},
                "txerrs": 2,
                "txretries": 0,
            }
        },
    }
    producer_stats_callback(json.dumps(producer_stats), "billing-outcomes")

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"worker": WORKER, **labels})

    assert value("arroyo_consumer_processing_seconds_total") == 0.125
    assert value("arroyo_consumer_run_total") == 5
    assert value("arroyo_consumer_librdkafka_total_queue_size") == 9
    broker = {"broker_id": "127.0.0.1:19092/1", "producer_name": "billing-outcomes"}
    assert value("arroyo_producer_librdkafka_p99_int_latency_seconds", **broker) == 0.0025
    assert value("arroyo_producer_librdkafka_p99_rtt_seconds", **broker) == 0.0012
    assert value("arroyo_producer_librdkafka_broker_tx_errors_total", **broker) == 2
    producer = {"producer_name": "billing-outcomes"}
    assert value("arroyo_producer_librdkafka_queue_messages", **producer) == 3
    assert value("arroyo_producer_librdkafka_queue_max_bytes", **producer) == 1073741824


def test_unknown_names_tags_and_bad_values_never_raise(
    registry: CollectorRegistry,
    backend: ArroyoPrometheusBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="workers.common.metrics")
    future: Any = "arroyo.consumer.some_future_metric"
    for _ in range(3):
        backend.increment(future, 1)
        backend.timing(future, 1.0, tags={"a": "b"})
    unknown_name_logs = [r for r in caplog.records if "some_future_metric" in r.getMessage()]
    assert len(unknown_name_logs) == 1

    # An unknown tag is dropped, a missing one is "".
    for _ in range(2):
        backend.increment(
            "arroyo.consumer.commit_status", 1, tags={"status": "success", "shard": "7"}
        )
    labels = {"worker": WORKER, "status": "success", "group_id": ""}
    assert registry.get_sample_value("arroyo_consumer_commit_status_total", labels) == 2
    assert len([r for r in caplog.records if "'shard'" in r.getMessage()]) == 1

    bad: Any = "not a number"
    backend.gauge("arroyo.consumer.dlq_buffer.assigned_partitions", bad)
    backend.increment("arroyo.consumer.run.count", -1)
    backend.timing("arroyo.consumer.latency", -0.5)  # clock skew: clamped to 0
    backend.increment("arroyo.consumer.commit_status", 1, tags={"status": ["unhashable"]})  # type: ignore[dict-item]
    assert registry.get_sample_value("arroyo_consumer_run_total", {"worker": WORKER}) == 0
    assert registry.get_sample_value("arroyo_consumer_latency_seconds_sum", {"worker": WORKER}) == 0


def test_label_sets_per_metric_are_capped(registry: CollectorRegistry) -> None:
    backend = ArroyoPrometheusBackend(registry, WORKER, max_series_per_metric=3)
    for partition in range(10):
        backend.gauge("arroyo.consumer.dlq_buffer.len", 1, tags={"partition_index": str(partition)})
    series = [
        sample
        for family in registry.collect()
        if family.name == "arroyo_consumer_dlq_buffer_messages"
        for sample in family.samples
    ]
    assert len(series) == 3  # the untagged series plus two partitions


# ---- step metrics -------------------------------------------------------------------


def test_step_metrics_series(registry: CollectorRegistry) -> None:
    fleet = FleetMetrics(registry, WORKER)
    decode = fleet.step("decode")
    assert fleet.step("decode") is decode
    decode.message_in()
    decode.message_in(4)
    decode.message_out(3)
    decode.invalid("invalid_json")
    decode.invalid("invalid_json", 2)
    decode.observe_latency(0.002)
    with decode.time():
        pass
    decode.observe_batch_size(250)
    fleet.step("produce").message_in()
    fleet.dlq_message("invalid_json")

    step = {"worker": WORKER, "step": "decode"}

    def value(name: str, labels: dict[str, str] = step) -> float | None:
        return registry.get_sample_value(name, labels)

    assert value("workers_step_messages_in_total") == 5
    assert value("workers_step_messages_out_total") == 3
    assert value("workers_step_messages_invalid_total", {**step, "reason": "invalid_json"}) == 3
    assert value("workers_step_latency_seconds_count") == 2
    latency_sum = value("workers_step_latency_seconds_sum")
    assert latency_sum is not None
    assert 0.002 <= latency_sum < 1.0
    assert value("workers_step_latency_seconds_bucket", {**step, "le": "1e-05"}) is not None
    assert value("workers_step_latency_seconds_bucket", {**step, "le": "10.0"}) == 2
    assert value("workers_batch_size_messages_count") == 1
    assert value("workers_batch_size_messages_sum") == 250
    produce = {"worker": WORKER, "step": "produce"}
    assert value("workers_step_messages_in_total", produce) == 1
    dlq = {"worker": WORKER, "reason": "invalid_json"}
    assert value("workers_dlq_messages_total", dlq) == 1
    types = family_types(registry)
    assert types["workers_step_messages_in"] == "counter"
    assert types["workers_step_latency_seconds"] == "histogram"
    assert types["workers_batch_size_messages"] == "histogram"


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        ("invalid_json", "invalid_json"),
        ("unknown_project_404", "unknown_project_404"),
        ("x" * 100, "x" * 64),
        ("Invalid JSON", "other"),
        ("invalid-json", "other"),
        ("invalid_json: Expecting value at line 1 column 1", "other"),
        ("ünicode", "other"),
        ("", "other"),
        ("other", "other"),
    ],
)
def test_invalid_reasons_are_sanitised(
    registry: CollectorRegistry, reason: str, label: str
) -> None:
    assert sanitize_reason(reason) == label
    step = FleetMetrics(registry, WORKER).step("decode")
    step.invalid(reason)
    labels = {"worker": WORKER, "step": "decode", "reason": label}
    assert registry.get_sample_value("workers_step_messages_invalid_total", labels) == 1


def test_distinct_reasons_per_step_are_capped(registry: CollectorRegistry) -> None:
    step = FleetMetrics(registry, WORKER, max_reasons=3).step("decode")
    for reason in ("a", "b", "c", "d", "a"):
        step.invalid(reason)

    def count(reason: str) -> float | None:
        labels = {"worker": WORKER, "step": "decode", "reason": reason}
        return registry.get_sample_value("workers_step_messages_invalid_total", labels)

    assert (count("a"), count("b"), count("c"), count("d"), count("other")) == (2, 1, None, None, 2)


@pytest.mark.parametrize("name", ["Decode", "decode step", "", "x" * 65])
def test_step_names_are_validated(registry: CollectorRegistry, name: str) -> None:
    with pytest.raises(ValueError, match="step name"):
        FleetMetrics(registry, WORKER).step(name)


# ---- consumer lag -------------------------------------------------------------------


def partition_stats(partition: int, lag: int, fetch_state: str = "active") -> dict[str, Any]:
    """One partition as librdkafka 2.x reports it in a consumer's statistics."""
    hi = 1000
    committed = -1001 if lag < 0 else hi - lag
    return {
        "partition": partition,
        "broker": -1 if partition == -1 else 1,
        "leader": -1 if partition == -1 else 1,
        "desired": partition != -1 and fetch_state == "active",
        "unknown": False,
        "msgq_cnt": 0,
        "msgq_bytes": 0,
        "xmit_msgq_cnt": 0,
        "xmit_msgq_bytes": 0,
        "fetchq_cnt": 0,
        "fetchq_size": 0,
        "fetch_state": fetch_state,
        "query_offset": -1001,
        "next_offset": hi,
        "app_offset": hi,
        "stored_offset": -1001,
        "stored_leader_epoch": -1,
        "commited_offset": committed,
        "committed_offset": committed,
        "committed_leader_epoch": 0,
        "eof_offset": -1001,
        "lo_offset": 0,
        "hi_offset": hi,
        "ls_offset": hi,
        "consumer_lag": lag,
        "consumer_lag_stored": -1,
        "leader_epoch": 0,
        "txmsgs": 0,
        "txbytes": 0,
        "rxmsgs": 1000,
        "rxbytes": 52000,
        "msgs": 1000,
        "rx_ver_drops": 0,
        "msgs_inflight": 0,
        "next_ack_seq": 0,
        "next_err_seq": 0,
        "acked_msgid": 0,
    }


def consumer_stats(partitions: Mapping[int, dict[str, Any]], replyq: int = 0) -> str:
    """A librdkafka consumer statistics document (trimmed brokers/cgrp, real shape)."""
    stats = {
        "name": "rdkafka#consumer-1",
        "client_id": "rdkafka",
        "type": "consumer",
        "ts": 5219307395,
        "time": 1767225600,
        "age": 12012336,
        "replyq": replyq,
        "msg_cnt": 0,
        "msg_size": 0,
        "msg_max": 100000,
        "msg_size_max": 1073741824,
        "simple_cnt": 0,
        "metadata_cache_cnt": 1,
        "brokers": {
            "127.0.0.1:19092/1": {
                "name": "127.0.0.1:19092/1",
                "nodeid": 1,
                "nodename": "127.0.0.1:19092",
                "source": "configured",
                "state": "UP",
                "stateage": 11903245,
                "outbuf_cnt": 0,
                "waitresp_cnt": 1,
                "tx": 120,
                "txbytes": 14000,
                "rx": 119,
                "rxbytes": 160000,
                "rtt": {"min": 150, "max": 2300, "avg": 400, "p99": 2303, "cnt": 12},
                "toppars": {"snuba-generic-metrics-0": {"topic": "snuba-generic-metrics"}},
            }
        },
        "topics": {
            "snuba-generic-metrics": {
                "topic": "snuba-generic-metrics",
                "age": 11950,
                "metadata_age": 11000,
                "batchsize": {"min": 0, "max": 0, "avg": 0, "p99": 0, "cnt": 0},
                "batchcnt": {"min": 0, "max": 0, "avg": 0, "p99": 0, "cnt": 0},
                "partitions": {str(p): data for p, data in partitions.items()},
            }
        },
        "cgrp": {
            "state": "up",
            "stateage": 11500,
            "join_state": "steady",
            "rebalance_age": 11400,
            "rebalance_cnt": 1,
            "rebalance_reason": "group is rebalancing",
            "assignment_size": len([p for p in partitions if p >= 0]),
        },
        "tx": 240,
        "tx_bytes": 28000,
        "rx": 238,
        "rx_bytes": 320000,
        "txmsgs": 0,
        "txmsg_bytes": 0,
        "rxmsgs": 2000,
        "rxmsg_bytes": 104000,
    }
    return json.dumps(stats)


@pytest.fixture
def first_stats() -> str:
    return consumer_stats(
        {
            0: partition_stats(0, 42),
            1: partition_stats(1, 7),
            2: partition_stats(2, -1),  # no committed offset yet: unknown
            3: partition_stats(3, 900, fetch_state="none"),  # revoked earlier: frozen value
            -1: partition_stats(-1, -1),  # librdkafka's internal UA partition
        },
        replyq=5,
    )


def lag(registry: CollectorRegistry, partition: str) -> float | None:
    labels = {"worker": WORKER, "topic": "snuba-generic-metrics", "partition": partition}
    return registry.get_sample_value("workers_consumer_lag_messages", labels)


def test_lag_reporter_parses_librdkafka_statistics(
    registry: CollectorRegistry, backend: ArroyoPrometheusBackend, first_stats: str
) -> None:
    reporter = ConsumerLagReporter(registry, WORKER)
    reporter(first_stats)
    assert lag(registry, "0") == 42
    assert lag(registry, "1") == 7
    assert lag(registry, "2") is None
    assert lag(registry, "3") is None
    assert lag(registry, "-1") is None
    # Forwarded to Arroyo's stats_callback, which reports `replyq` through the backend.
    queue = registry.get_sample_value(
        "arroyo_consumer_librdkafka_total_queue_size", {"worker": WORKER}
    )
    assert queue == 5

    # Rebalance: partition 0 is revoked (stopped), partition 1 moves on.
    reporter(
        consumer_stats({0: partition_stats(0, 42, fetch_state="stopped"), 1: partition_stats(1, 3)})
    )
    assert lag(registry, "0") is None
    assert lag(registry, "1") == 3
    reporter(consumer_stats({}))
    assert lag(registry, "1") is None


def test_lag_reporter_never_raises(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    forwarded: list[str] = []
    reporter = ConsumerLagReporter(registry, WORKER, forward=forwarded.append)
    reporter("{not json")
    reporter(json.dumps({"topics": {"t": {"partitions": {"0": {"consumer_lag": "x"}}}}}))
    reporter(json.dumps({"topics": []}))

    def failing_forward(stats_json: str) -> None:
        raise RuntimeError("boom")

    ConsumerLagReporter(CollectorRegistry(), WORKER, forward=failing_forward)("{}")
    assert len(forwarded) == 3


# ---- exposition ---------------------------------------------------------------------


def test_metrics_are_served_over_http(registry: CollectorRegistry, first_stats: str) -> None:
    fleet = FleetMetrics(registry, WORKER)
    fleet.step("decode").message_in(2)
    ArroyoPrometheusBackend(registry, WORKER).timing("arroyo.consumer.poll.time", 0.5)
    ConsumerLagReporter(registry, WORKER, forward=None)(first_stats)
    server = start_metrics_server(0, registry, host="127.0.0.1")
    try:
        assert server.port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
            assert r.status == 200
            body = r.read().decode()
    finally:
        server.shutdown()
    assert 'workers_step_messages_in_total{step="decode",worker="billing"} 2.0' in body
    assert 'arroyo_consumer_poll_seconds_total{worker="billing"} 0.5' in body
    assert (
        'workers_consumer_lag_messages{partition="0",topic="snuba-generic-metrics",'
        'worker="billing"} 42.0'
    ) in body
    assert "# TYPE workers_step_latency_seconds histogram" in body


# ---- multiprocess mode --------------------------------------------------------------


def _child_process(partitions: dict[int, int], revoked: list[int], messages: int) -> None:
    """Runs in a `spawn` child with PROMETHEUS_MULTIPROC_DIR set (see the test below)."""
    if not multiprocess_active():
        raise SystemExit(3)
    registry = CollectorRegistry()
    ArroyoPrometheusBackend(registry, WORKER).increment("arroyo.consumer.run.count", messages)
    FleetMetrics(registry, WORKER).step("decode").message_in(messages)
    reporter = ConsumerLagReporter(registry, WORKER, forward=None)
    reporter(consumer_stats({p: partition_stats(p, lag) for p, lag in partitions.items()}))
    if revoked:
        kept = {p: lag for p, lag in partitions.items() if p not in revoked}
        reporter(consumer_stats({p: partition_stats(p, lag) for p, lag in kept.items()}))


def test_multiprocess_children_are_aggregated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"stale file from a previous run")
    prepare_multiprocess_dir(directory)
    assert list(directory.iterdir()) == []

    monkeypatch.setenv(MULTIPROC_DIR_ENV, str(directory))
    context = multiprocessing.get_context("spawn")
    # Child A consumed partitions 0 and 1, then lost partition 1 to child B.
    first = context.Process(target=_child_process, args=({0: 10, 1: 5}, [1], 3))
    second = context.Process(target=_child_process, args=({1: 4, 2: 7}, [], 4))
    for child in (first, second):
        child.start()
    for child in (first, second):
        child.join(60)
        assert child.exitcode == 0

    registry = multiprocess_registry(directory)
    step = {"worker": WORKER, "step": "decode"}
    assert registry.get_sample_value("workers_step_messages_in_total", step) == 7
    assert registry.get_sample_value("arroyo_consumer_run_total", {"worker": WORKER}) == 7
    # livesum: one series per partition, summed over processes (A's revoked one is 0).
    assert (lag(registry, "0"), lag(registry, "1"), lag(registry, "2")) == (10, 4, 7)

    assert first.pid is not None
    mark_process_dead(first.pid, directory)
    assert (lag(registry, "0"), lag(registry, "1"), lag(registry, "2")) == (None, 4, 7)
    # Counters of dead processes keep counting in the sums.
    assert registry.get_sample_value("workers_step_messages_in_total", step) == 7

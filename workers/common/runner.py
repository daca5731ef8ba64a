"""One consumer process: a Kafka consumer, the worker's strategy chain and Arroyo's loop.

`run_worker_process` builds everything from a `ConsumerDefinition` and `RunOptions`, runs
Arroyo's `StreamProcessor` until SIGTERM/SIGINT, then shuts down gracefully: the strategy
chain is closed and joined (in-flight work finishes, bounded by `join_timeout`), the DLQ
producer is flushed and the final offsets are committed synchronously before the consumer
leaves the group. Invalid messages beyond the DLQ limits end the loop with `DlqLimitExceeded`
instead, before the offset of the message that broke the limit is committed
(`workers.common.dlq_limit`).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from arroyo.backends.abstract import Consumer
from arroyo.backends.kafka import KafkaPayload, KafkaProducer
from arroyo.commit import CommitPolicy
from arroyo.dlq import DlqLimit, DlqPolicy
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies import Healthcheck
from arroyo.processing.strategies.abstract import ProcessingStrategy, ProcessingStrategyFactory
from arroyo.types import Commit, Partition, Topic
from arroyo.utils.metrics import configure_metrics
from prometheus_client import CollectorRegistry

from workers.common.dlq import build_dlq_policy
from workers.common.dlq_limit import (
    DEFAULT_DLQ_LIMIT,
    DlqLimiter,
    DlqLimitExceeded,
    limits_enforced,
)
from workers.common.dlq_limit_strategy import DlqLimitFirst
from workers.common.fetching_consumer import FetchingKafkaConsumer
from workers.common.heap import freeze_startup_heap
from workers.common.kafka_config import (
    DEFAULT_COMMIT_INTERVAL_MS,
    DEFAULT_MAX_POLL_INTERVAL_MS,
    GROUP_PROTOCOL_CONSUMER,
    ConsumerOptions,
    consumer_configuration,
    producer_configuration,
)
from workers.common.message_runs import RunConsumer
from workers.common.metrics import (
    ArroyoPrometheusBackend,
    ConsumerLagReporter,
    FleetMetrics,
    start_metrics_server,
)
from workers.common.registry import ConsumerDefinition, StrategyContext
from workers.common.settings import Settings
from workers.common.signals import exit_on_next_shutdown_signal, handling_shutdown_signals
from workers.common.static_membership import group_instance_ids, wait_for_previous_incarnation

logger = logging.getLogger(__name__)

DEFAULT_JOIN_TIMEOUT_SECONDS = 25.0
DLQ_FLUSH_TIMEOUT_SECONDS = 10.0
#: After a DLQ-limit stop, how long `/metrics` waits for a scrape before the process exits:
#: two of the PodMonitor's 15 s intervals (docs/operations.md, DLQ limits).
FINAL_SCRAPE_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class RunOptions:
    """Everything `workers run` decides about one consumer, independent of the CLI."""

    input_topic: str
    consumer_group: str
    max_batch_size: int
    max_batch_time_ms: int
    auto_offset_reset: str = "earliest"
    processes: int = 1
    healthcheck_file: Path | None = None
    enable_dlq: bool = True
    join_timeout_seconds: float = DEFAULT_JOIN_TIMEOUT_SECONDS
    max_poll_interval_ms: int = DEFAULT_MAX_POLL_INTERVAL_MS
    commit_interval_ms: int = DEFAULT_COMMIT_INTERVAL_MS
    group_instance_id: str | None = None
    group_protocol: str = GROUP_PROTOCOL_CONSUMER
    metrics_port: int | None = None
    # `--dlq-max-invalid-ratio`, `--dlq-max-consecutive-invalid` (None: that limit is off).
    dlq_limit: DlqLimit = DEFAULT_DLQ_LIMIT
    worker_options: Mapping[str, Any] = field(default_factory=dict)
    # Which of `--processes N`'s consumer processes this is (set by the supervisor).
    process_index: int = 0


class HealthcheckFirst(ProcessingStrategyFactory[Any]):
    """Puts Arroyo's `Healthcheck` at the head of every chain the inner factory builds."""

    def __init__(self, healthcheck_file: Path, inner: ProcessingStrategyFactory[Any]) -> None:
        self.__healthcheck_file = str(healthcheck_file)
        self.__inner = inner

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[Any]:
        return Healthcheck(
            self.__healthcheck_file, self.__inner.create_with_partitions(commit, partitions)
        )

    def shutdown(self) -> None:
        self.__inner.shutdown()


def build_strategy_factory(
    definition: ConsumerDefinition,
    options: RunOptions,
    settings: Settings,
    metrics: FleetMetrics,
    consumer: Consumer[Any] | None = None,
    lag_reporter: ConsumerLagReporter | None = None,
) -> ProcessingStrategyFactory[Any]:
    limiter = (
        DlqLimiter(options.dlq_limit, definition.name, metrics)
        if limits_enforced(options.dlq_limit)
        else None
    )
    context = StrategyContext(
        worker=definition.name,
        settings=settings,
        input_topic=options.input_topic,
        max_batch_size=options.max_batch_size,
        max_batch_time_ms=options.max_batch_time_ms,
        metrics=metrics,
        options=options.worker_options,
        dlq_topic=definition.dlq_topic if options.enable_dlq else None,
        dlq_limiter=limiter if definition.consumes_runs else None,
        consumer_group=options.consumer_group,
        group_instance_id=options.group_instance_id,
        process_index=options.process_index,
        consumer=consumer,
        note_committed=lag_reporter.note_committed if lag_reporter is not None else None,
    )
    factory = definition.build_strategy_factory(context)
    if limiter is not None and not definition.consumes_runs:
        factory = DlqLimitFirst(limiter, factory)
    if options.healthcheck_file is not None:
        factory = HealthcheckFirst(options.healthcheck_file, factory)
    return factory


def build_processor(
    consumer: Consumer[Any],
    definition: ConsumerDefinition,
    options: RunOptions,
    settings: Settings,
    metrics: FleetMetrics,
    dlq_policy: DlqPolicy[KafkaPayload] | None,
    lag_reporter: ConsumerLagReporter | None = None,
) -> StreamProcessor[Any]:
    return StreamProcessor(
        consumer,
        Topic(options.input_topic),
        build_strategy_factory(definition, options, settings, metrics, consumer, lag_reporter),
        commit_policy=CommitPolicy(
            min_commit_frequency_sec=options.commit_interval_ms / 1000.0,
            min_commit_messages=None,
        ),
        dlq_policy=dlq_policy,
        join_timeout=options.join_timeout_seconds,
    )


def run_until_shutdown(processor: StreamProcessor[Any]) -> None:
    """Run the loop; SIGTERM/SIGINT end it gracefully (in-flight work joined and committed),
    a second signal exits at once."""

    def request_shutdown(signum: int, frame: FrameType | None) -> None:
        logger.info("shutdown requested", extra={"signal": signal.Signals(signum).name})
        exit_on_next_shutdown_signal()
        processor.signal_shutdown()

    freeze_startup_heap()
    with handling_shutdown_signals(request_shutdown):
        processor.run()


def run_worker_process(
    definition: ConsumerDefinition,
    options: RunOptions,
    settings: Settings,
    registry: CollectorRegistry,
    serve_metrics: bool = True,
) -> None:
    """Run one Kafka consumer until a shutdown signal; returns after a graceful shutdown."""
    configure_metrics(ArroyoPrometheusBackend(registry, definition.name), force=True)
    metrics = FleetMetrics(registry, definition.name)
    metrics_server = None
    if serve_metrics and options.metrics_port is not None:
        metrics_server = start_metrics_server(options.metrics_port, registry)

    lag_reporter = ConsumerLagReporter(registry, definition.name)
    configuration = consumer_configuration(
        settings,
        ConsumerOptions(
            group_id=options.consumer_group,
            auto_offset_reset=options.auto_offset_reset,
            max_poll_interval_ms=options.max_poll_interval_ms,
            group_instance_id=options.group_instance_id,
            group_protocol=options.group_protocol,
            client_id=f"{definition.name}-{options.process_index}",
        ),
        stats_callback=lag_reporter,
    )
    dlq_producer: KafkaProducer | None = None
    dlq_policy: DlqPolicy[KafkaPayload] | None = None
    # A chain that consumes runs dead-letters invalid messages itself.
    if options.enable_dlq and definition.dlq_topic and not definition.consumes_runs:
        dlq_producer = KafkaProducer(
            producer_configuration(settings, client_id=f"{definition.name}-dlq")
        )
        dlq_policy = build_dlq_policy(dlq_producer, definition.dlq_topic, definition.name, metrics)

    if options.group_instance_id:
        wait_for_previous_incarnation(
            options.group_instance_id, group_instance_ids(settings, options.consumer_group)
        )
    consumer: Consumer[Any] = (
        RunConsumer(configuration)
        if definition.consumes_runs
        else FetchingKafkaConsumer(configuration)
    )
    processor = build_processor(
        consumer, definition, options, settings, metrics, dlq_policy, lag_reporter
    )
    logger.info(
        "consumer starting",
        extra={
            "worker": definition.name,
            "topic": options.input_topic,
            "group": options.consumer_group,
            "dlq_topic": definition.dlq_topic if options.enable_dlq else None,
        },
    )
    try:
        run_until_shutdown(processor)
    except DlqLimitExceeded:
        # The process exits next, within seconds of its start when it is restarted on the
        # same input: without one more scrape, Prometheus would rarely see the stop counted.
        if metrics_server is not None:
            metrics_server.wait_for_next_scrape(FINAL_SCRAPE_TIMEOUT_SECONDS)
        raise
    finally:
        if dlq_producer is not None:
            dlq_producer.close().result(timeout=DLQ_FLUSH_TIMEOUT_SECONDS)
        if metrics_server is not None:
            metrics_server.shutdown()
        logger.info("consumer stopped", extra={"worker": definition.name})

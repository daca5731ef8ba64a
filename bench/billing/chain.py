"""Today's chain (`BillingStrategyFactory`) run in-process by Arroyo's `StreamProcessor`.

`Stopwatch` times a chain from its first message to the release of every offset;
`run_arroyo` runs one to the end of the input; `OneMessageRuns` feeds it from Arroyo's own
`KafkaConsumer`; the fleet's and Arroyo's stock consumer configurations; and
`run_chain_variant`, the at-least-once variants (`CHAIN_VARIANTS`).
"""

from __future__ import annotations

import cProfile
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from arroyo.backends.abstract import Consumer as ArroyoConsumer
from arroyo.backends.kafka import KafkaConsumer, KafkaPayload
from arroyo.backends.kafka.configuration import build_kafka_consumer_configuration
from arroyo.commit import CommitPolicy
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies.abstract import ProcessingStrategy, ProcessingStrategyFactory
from arroyo.types import BrokerValue, Commit, Message, Partition, Topic
from prometheus_client import CollectorRegistry

from bench.billing.workload import CUSTOM_PROJECTS, Workload, flagged_count, reset_flags
from harness.kafka import unique_name
from workers.billing.definition import build_outcomes_producer, flag_store_factory
from workers.billing.factory import BillingStrategyFactory
from workers.billing.transactions import ExactlyOnce
from workers.common.heap import freeze_startup_heap
from workers.common.kafka_config import (
    DEFAULT_COMMIT_INTERVAL_MS,
    ConsumerOptions,
    consumer_configuration,
)
from workers.common.message_runs import Headers, MessageRun, RunConsumer
from workers.common.metrics import FleetMetrics
from workers.common.settings import Settings


class Stopwatch(ProcessingStrategyFactory[Any]):
    """Wraps a factory: starts at the first message, stops when every offset is released.

    Released means handed to Arroyo's commit (at-least-once chains), or committed in a Kafka
    transaction (`fleet_exactly_once`, whose producer reports to `released` itself: Arroyo's
    commit is never called in exactly-once mode).
    """

    def __init__(self, inner: ProcessingStrategyFactory[Any], messages: int) -> None:
        self.inner = inner
        self.messages = messages
        self.started: float | None = None
        self.finished: float | None = None
        self.committed: dict[Partition, int] = {}
        self.on_done: Callable[[], None] = lambda: None

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[Any]:
        def observe(offsets: Mapping[Partition, int], force: bool = False) -> None:
            self.released(offsets)
            commit(offsets, force)

        return _Head(self, self.inner.create_with_partitions(observe, partitions))

    def released(self, offsets: Mapping[Partition, int]) -> None:
        """These offsets are released; stops the clock once they cover the whole input."""
        self.committed.update(offsets)
        if self.finished is None and sum(self.committed.values()) >= self.messages:
            self.finished = time.perf_counter()
            self.on_done()

    def shutdown(self) -> None:
        self.inner.shutdown()


class _Head(ProcessingStrategy[Any]):
    def __init__(self, watch: Stopwatch, inner: ProcessingStrategy[Any]) -> None:
        self.__watch = watch
        self.__inner = inner

    def submit(self, message: Message[Any]) -> None:
        if self.__watch.started is None:
            self.__watch.started = time.perf_counter()
        self.__inner.submit(message)

    def poll(self) -> None:
        self.__inner.poll()

    def join(self, timeout: float | None = None) -> None:
        self.__inner.join(timeout)

    def close(self) -> None:
        self.__inner.close()

    def terminate(self) -> None:
        self.__inner.terminate()


class _PayloadMessage:
    """A `KafkaPayload` and its offset, shaped like a message of a run."""

    __slots__ = ("_offset", "_payload")

    def __init__(self, payload: KafkaPayload, offset: int) -> None:
        self._payload = payload
        self._offset = offset

    def key(self) -> bytes | None:
        return self._payload.key

    def value(self) -> bytes:
        return self._payload.value

    def headers(self) -> Headers:
        return self._payload.headers

    def offset(self) -> int:
        return self._offset


class OneMessageRuns(ProcessingStrategy[KafkaPayload]):
    """Hands each message of Arroyo's own `KafkaConsumer` to a run-taking chain as a run of one."""

    def __init__(self, next_step: ProcessingStrategy[MessageRun]) -> None:
        self.__next_step = next_step

    def submit(self, message: Message[KafkaPayload]) -> None:
        value = message.value
        assert isinstance(value, BrokerValue)
        run = MessageRun((_PayloadMessage(value.payload, value.offset),))
        self.__next_step.submit(
            Message(BrokerValue(run, value.partition, value.offset, value.timestamp))
        )

    def poll(self) -> None:
        self.__next_step.poll()

    def close(self) -> None:
        self.__next_step.close()

    def terminate(self) -> None:
        self.__next_step.terminate()

    def join(self, timeout: float | None = None) -> None:
        self.__next_step.join(timeout)


class OneMessageRunsFactory(ProcessingStrategyFactory[KafkaPayload]):
    def __init__(self, inner: ProcessingStrategyFactory[MessageRun]) -> None:
        self.__inner = inner

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        return OneMessageRuns(self.__inner.create_with_partitions(commit, partitions))

    def shutdown(self) -> None:
        self.__inner.shutdown()


def run_arroyo(
    work: Workload,
    factory: ProcessingStrategyFactory[Any],
    consumer_config: dict[str, Any],
    profile: cProfile.Profile | None = None,
    runs: bool = True,
    consumer: ArroyoConsumer[Any] | None = None,
) -> float:
    """Run `factory` (wrapped in a `Stopwatch` unless it is one) to the end of the input.

    `consumer`: one built by the caller (the exactly-once chain needs the `RunConsumer` that
    feeds it); by default one is made from `consumer_config`.
    """
    watch = factory if isinstance(factory, Stopwatch) else Stopwatch(factory, work.messages)
    if consumer is None:
        consumer = RunConsumer(consumer_config) if runs else KafkaConsumer(consumer_config)
    processor = StreamProcessor(
        consumer,
        Topic(work.topic),
        watch,
        CommitPolicy(DEFAULT_COMMIT_INTERVAL_MS / 1000.0, None),
        join_timeout=30.0,
    )
    watch.on_done = processor.signal_shutdown
    freeze_startup_heap()  # as `workers run` does before its processor runs
    if profile is not None:
        profile.enable()
    try:
        processor.run()
    finally:
        if profile is not None:
            profile.disable()
    assert watch.started is not None
    assert watch.finished is not None, "not every offset was released"
    return work.messages / (watch.finished - watch.started)


def fleet_consumer_config(settings: Settings) -> dict[str, Any]:
    return consumer_configuration(settings, ConsumerOptions(group_id=unique_name("bench-bill")))


def stock_consumer_config(settings: Settings) -> dict[str, Any]:
    return build_kafka_consumer_configuration(
        settings.kafka_client_config(),
        group_id=unique_name("bench-bill-stock"),
        auto_offset_reset="earliest",
    )


def fleet_factory(
    work: Workload,
    outcomes_topic: str,
    aggregate_window_seconds: float | None = None,
    exactly_once: ExactlyOnce | None = None,
    registry: CollectorRegistry | None = None,
) -> BillingStrategyFactory:
    settings = work.settings
    return BillingStrategyFactory(
        producer_factory=None if exactly_once else lambda: build_outcomes_producer(settings),
        exactly_once=exactly_once,
        metrics=FleetMetrics(CollectorRegistry() if registry is None else registry, "billing"),
        flag_store_factory=flag_store_factory(settings),
        outcomes_topic=outcomes_topic,
        aggregate_window_seconds=aggregate_window_seconds,
    )


# The variants running today's chain: (aggregation window in seconds, Arroyo's stock
# consumer configuration instead of the fleet's, fed by `RunConsumer` rather than Arroyo's
# one-message-per-poll `KafkaConsumer` through `OneMessageRuns`).
CHAIN_VARIANTS: Final[Mapping[str, tuple[float | None, bool, bool]]] = {
    "fleet": (None, False, True),
    "fleet_per_message": (None, False, False),
    "fleet_aggregated": (0.2, False, True),
    "arroyo_stock": (None, True, False),
    "fleet_stock_config": (None, True, True),
}


def run_chain_variant(
    work: Workload, variant: str, outcomes_topic: str, profile: cProfile.Profile | None
) -> float:
    """One run of a variant of `CHAIN_VARIANTS` (flags on; `profile` for `fleet` only)."""
    aggregate_window_seconds, stock_config, runs = CHAIN_VARIANTS[variant]
    consumer_config = (stock_consumer_config if stock_config else fleet_consumer_config)(
        work.settings
    )
    reset_flags(work)
    factory = fleet_factory(work, outcomes_topic, aggregate_window_seconds)
    rate = run_arroyo(
        work,
        factory if runs else OneMessageRunsFactory(factory),
        consumer_config,
        profile if variant == "fleet" else None,
        runs=runs,
    )
    flagged = flagged_count(work)
    assert flagged == CUSTOM_PROJECTS, f"{variant}: {flagged} projects flagged"
    return rate

"""The consumer runtime driven by Arroyo's LocalBroker: shutdown, commits and the DLQ."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping

from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.local.backend import LocalBroker
from arroyo.backends.local.storages.memory import MemoryMessageStorage
from arroyo.dlq import InvalidMessage
from arroyo.processing.strategies import BatchStep, CommitOffsets, RunTask, UnbatchStep
from arroyo.processing.strategies.abstract import ProcessingStrategy, ProcessingStrategyFactory
from arroyo.processing.strategies.batching import ValuesBatch
from arroyo.types import BrokerValue, Commit, Message, Partition, Topic
from prometheus_client import CollectorRegistry

from tests.support.run_options import default_run_options
from workers.common.dlq import build_dlq_policy
from workers.common.metrics import FleetMetrics
from workers.common.registry import ConsumerDefinition, StrategyContext
from workers.common.runner import build_processor, run_until_shutdown
from workers.common.settings import Settings

INPUT = Topic("input")
DLQ = Topic("input-dlq")


class SinkFactory(ProcessingStrategyFactory[KafkaPayload]):
    """RunTask(validate) → BatchStep → RunTask(sink) → UnbatchStep → CommitOffsets."""

    def __init__(
        self,
        context: StrategyContext,
        sink: list[bytes],
        on_message: Callable[[KafkaPayload], None] = lambda payload: None,
    ) -> None:
        self.__context = context
        self.__sink = sink
        self.__on_message = on_message

    def __validate(self, message: Message[KafkaPayload]) -> KafkaPayload:
        self.__on_message(message.payload)
        if message.payload.value.startswith(b"poison"):
            value = message.value
            assert isinstance(value, BrokerValue)
            raise InvalidMessage(value.partition, value.offset, reason="poison_pill: test")
        return message.payload

    def __store(self, message: Message[ValuesBatch[KafkaPayload]]) -> ValuesBatch[KafkaPayload]:
        self.__sink.extend(value.payload.value for value in message.payload)
        return message.payload

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        return RunTask(
            self.__validate,
            BatchStep(
                self.__context.max_batch_size,
                self.__context.max_batch_time_seconds,
                RunTask(self.__store, UnbatchStep(CommitOffsets(commit))),
            ),
        )


def committed(broker: LocalBroker[KafkaPayload], group: str) -> Mapping[Partition, int]:
    probe = broker.get_consumer(group)
    return broker.subscribe(probe, [INPUT])  # type: ignore[arg-type]


def make_broker(values: list[bytes]) -> LocalBroker[KafkaPayload]:
    broker: LocalBroker[KafkaPayload] = LocalBroker(MemoryMessageStorage())
    broker.create_topic(INPUT, partitions=1)
    broker.create_topic(DLQ, partitions=1)
    producer = broker.get_producer()
    for value in values:
        producer.produce(INPUT, KafkaPayload(None, value, [])).result()
    return broker


def test_sigterm_finishes_and_commits_in_flight_batch() -> None:
    values = [f"m{i}".encode() for i in range(10)]
    broker = make_broker(values)
    sink: list[bytes] = []
    seen: list[bytes] = []

    def on_message(payload: KafkaPayload) -> None:
        seen.append(payload.value)
        if len(seen) == len(values):
            # The whole input is in flight (batch of 100 not full, 60 s not elapsed).
            os.kill(os.getpid(), signal.SIGTERM)

    definition = ConsumerDefinition(
        name="sink",
        description="test",
        topic=INPUT.name,
        build_strategy_factory=lambda context: SinkFactory(context, sink, on_message),
        max_batch_size=100,
        max_batch_time_ms=60_000,
    )
    settings = Settings.from_env({})
    metrics = FleetMetrics(CollectorRegistry(), "sink")
    processor = build_processor(
        broker.get_consumer("sink"),
        definition,
        default_run_options(definition),
        settings,
        metrics,
        dlq_policy=None,
    )
    previous = signal.getsignal(signal.SIGTERM)
    run_until_shutdown(processor)

    assert sink == values
    assert committed(broker, "sink") == {Partition(INPUT, 0): len(values)}
    assert signal.getsignal(signal.SIGTERM) == previous


def test_poison_message_goes_to_dlq_with_reason_and_the_rest_is_processed() -> None:
    values = [b"a", b"poison-1", b"b", b"c"]
    broker = make_broker(values)
    sink: list[bytes] = []

    definition = ConsumerDefinition(
        name="sink",
        description="test",
        topic=INPUT.name,
        build_strategy_factory=lambda context: SinkFactory(context, sink),
        dlq_topic=DLQ.name,
        max_batch_size=1,
        max_batch_time_ms=10,
    )
    registry = CollectorRegistry()
    metrics = FleetMetrics(registry, "sink")
    dlq_policy = build_dlq_policy(broker.get_producer(), DLQ.name, "sink", metrics)
    processor = build_processor(
        broker.get_consumer("sink"),
        definition,
        default_run_options(definition),
        Settings.from_env({}),
        metrics,
        dlq_policy,
    )
    for _ in range(50):
        processor._run_once()
        if len(sink) == 3:
            break
    processor.signal_shutdown()
    processor.run()

    assert sink == [b"a", b"b", b"c"]
    assert committed(broker, "sink") == {Partition(INPUT, 0): 4}
    dead = broker.consume(Partition(DLQ, 0), 0)
    assert dead is not None
    assert dead.payload.value == b"poison-1"
    headers = dict(dead.payload.headers)
    assert headers["reason"] == b"poison_pill: test"
    assert headers["original_offset"] == b"1"
    assert headers["original_partition"] == b"0"
    assert headers["original_topic"] == b"input"
    assert broker.consume(Partition(DLQ, 0), 1) is None
    assert (
        registry.get_sample_value(
            "workers_dlq_messages_total", {"worker": "sink", "reason": "poison_pill"}
        )
        == 1.0
    )

"""A real consumer registered only in tests: validates messages and copies them to a topic.

Chain: RunTask(validate) → ProduceAll(output topic) → CommitOffsets. A message whose value
starts with `poison` raises `InvalidMessage` with reason `poison_pill: ...`, so the runtime
routes it to the DLQ. Every forwarded message keeps its key and carries the source offset in
an `echo_offset` header, so tests can tell exactly which input offsets were processed.
"""

from __future__ import annotations

from collections.abc import Mapping

import click
from arroyo.backends.kafka import KafkaPayload, KafkaProducer
from arroyo.dlq import InvalidMessage
from arroyo.processing.strategies import CommitOffsets, RunTask
from arroyo.processing.strategies.abstract import ProcessingStrategy, ProcessingStrategyFactory
from arroyo.types import BrokerValue, Commit, Message, Partition, Topic

from tests.support.produce_all import ProduceAll
from workers.common.kafka_config import producer_configuration
from workers.common.registry import ConsumerDefinition, ConsumerRegistry, StrategyContext

ECHO_INPUT_TOPIC = "test-echo-input"
ECHO_OUTPUT_TOPIC = "test-echo-output"
ECHO_DLQ_TOPIC = "test-echo-dlq"


class EchoStrategyFactory(ProcessingStrategyFactory[KafkaPayload]):
    def __init__(self, context: StrategyContext) -> None:
        self.__context = context
        self.__step = context.metrics.step("validate")
        self.__output = Topic(str(context.options.get("output_topic") or ECHO_OUTPUT_TOPIC))
        self.__producer = KafkaProducer(
            producer_configuration(context.settings, client_id="test-echo")
        )

    def __validate(self, message: Message[KafkaPayload]) -> KafkaPayload:
        self.__step.message_in()
        payload = message.payload
        value = message.value
        assert isinstance(value, BrokerValue)
        if payload.value.startswith(b"poison"):
            self.__step.invalid("poison_pill")
            raise InvalidMessage(
                value.partition, value.offset, reason="poison_pill: value starts with poison"
            )
        self.__step.message_out()
        headers = [
            *payload.headers,
            ("echo_partition", str(value.partition.index).encode()),
            ("echo_offset", str(value.offset).encode()),
        ]
        return KafkaPayload(payload.key, payload.value, headers)

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        return RunTask(
            self.__validate,
            ProduceAll(self.__producer, self.__output, CommitOffsets(commit)),
        )

    def shutdown(self) -> None:
        self.__producer.close().result(timeout=10)


def build_definition(input_topic: str = ECHO_INPUT_TOPIC) -> ConsumerDefinition:
    return ConsumerDefinition(
        name="test-echo",
        description="Copies valid messages to an output topic (tests only).",
        topic=input_topic,
        dlq_topic=ECHO_DLQ_TOPIC,
        build_strategy_factory=EchoStrategyFactory,
        default_consumer_group="test-echo",
        output_topics=(ECHO_OUTPUT_TOPIC,),
        click_options=(
            click.Option(["--output-topic"], default=ECHO_OUTPUT_TOPIC, help="Copies go here."),
        ),
    )


def build_registry() -> ConsumerRegistry:
    return ConsumerRegistry([build_definition()])

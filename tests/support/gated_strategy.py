"""Test strategies around Arroyo's processor: `PassThrough`, a step that hands everything to
the next one (subclasses change `submit`), and `GatedStep`, which refuses every message while
its gate is closed (backpressure on demand) and records those it accepts."""

from __future__ import annotations

from collections.abc import Mapping

from arroyo.backends.kafka import KafkaPayload
from arroyo.processing.strategies import CommitOffsets, MessageRejected, ProcessingStrategy
from arroyo.processing.strategies.abstract import ProcessingStrategyFactory
from arroyo.types import BrokerValue, Commit, Message, Partition


class Gate:
    def __init__(self) -> None:
        self.open = False
        self.accepted: list[tuple[int, int]] = []


class PassThrough(ProcessingStrategy[KafkaPayload]):
    def __init__(self, next_step: ProcessingStrategy[KafkaPayload]) -> None:
        self.next_step = next_step

    def submit(self, message: Message[KafkaPayload]) -> None:
        self.next_step.submit(message)

    def poll(self) -> None:
        self.next_step.poll()

    def join(self, timeout: float | None = None) -> None:
        self.next_step.join(timeout)

    def close(self) -> None:
        self.next_step.close()

    def terminate(self) -> None:
        self.next_step.terminate()


class GatedStep(PassThrough):
    """Refuses every message while the gate is closed; records those it accepts."""

    def __init__(self, gate: Gate, next_step: ProcessingStrategy[KafkaPayload]) -> None:
        super().__init__(next_step)
        self.__gate = gate

    def submit(self, message: Message[KafkaPayload]) -> None:
        if not self.__gate.open:
            raise MessageRejected
        value = message.value
        assert isinstance(value, BrokerValue)
        self.__gate.accepted.append((value.partition.index, value.offset))
        self.next_step.submit(message)


class GatedFactory(ProcessingStrategyFactory[KafkaPayload]):
    def __init__(self, gate: Gate) -> None:
        self.__gate = gate

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        return GatedStep(self.__gate, CommitOffsets(commit))

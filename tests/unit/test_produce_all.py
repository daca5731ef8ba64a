"""The echo worker's producing step: `join` waits for deliveries still in flight (Arroyo's
`Produce.join` stops at the first one, leaving it and the rest uncommitted)."""

from __future__ import annotations

from concurrent.futures import Future
from datetime import datetime

from arroyo.backends.kafka import KafkaPayload
from arroyo.processing.strategies import Produce
from arroyo.processing.strategies.abstract import ProcessingStrategy
from arroyo.types import BrokerValue, FilteredPayload, Message, Partition, Topic

from tests.support.produce_all import ProduceAll

PARTITION = Partition(Topic("in"), 0)
NOW = datetime(2026, 12, 3)


class AcknowledgedWhenWaitedOn(Future[BrokerValue[KafkaPayload]]):
    """A delivery not acknowledged yet, acknowledged as soon as someone waits for it."""

    def __init__(self, offset: int) -> None:
        super().__init__()
        self.__offset = offset

    def result(self, timeout: float | None = None) -> BrokerValue[KafkaPayload]:
        if not self.done():
            produced = Partition(Topic("out"), 0)
            self.set_result(BrokerValue(KafkaPayload(None, b"", []), produced, self.__offset, NOW))
        return super().result(timeout)


class LateProducer:
    def __init__(self) -> None:
        self.pending: list[AcknowledgedWhenWaitedOn] = []

    def produce(self, destination: Topic, payload: KafkaPayload) -> AcknowledgedWhenWaitedOn:
        delivery = AcknowledgedWhenWaitedOn(len(self.pending))
        self.pending.append(delivery)
        return delivery


class Forwarded(ProcessingStrategy[FilteredPayload | KafkaPayload]):
    def __init__(self) -> None:
        self.committable: list[dict[Partition, int]] = []

    def submit(self, message: Message[FilteredPayload | KafkaPayload]) -> None:
        self.committable.append(dict(message.committable))

    def poll(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass

    def terminate(self) -> None:
        pass


def message(offset: int) -> Message[FilteredPayload | KafkaPayload]:
    return Message(BrokerValue(KafkaPayload(None, b"v", []), PARTITION, offset, NOW))


def submit_three_then_join(step_class: type[ProduceAll] | type[Produce[KafkaPayload]]) -> list[int]:
    producer = LateProducer()
    forwarded = Forwarded()
    step = step_class(producer, Topic("out"), forwarded)  # type: ignore[arg-type]
    for offset in range(3):
        step.submit(message(offset))
    step.poll()
    assert forwarded.committable == []
    step.close()
    step.join(timeout=10.0)
    return [committable[PARTITION] for committable in forwarded.committable]


def test_join_waits_for_each_delivery_in_flight() -> None:
    assert submit_three_then_join(ProduceAll) == [1, 2, 3]


def test_arroyo_produce_join_gives_up_at_the_first_delivery_in_flight() -> None:
    # Why the echo worker does not use it (docs/rebalancing.md, What happens to in-flight work).
    assert submit_three_then_join(Produce) == []


def test_a_filtered_message_is_forwarded_without_producing() -> None:
    producer = LateProducer()
    forwarded = Forwarded()
    step = ProduceAll(producer, Topic("out"), forwarded)  # type: ignore[arg-type]
    step.submit(Message(BrokerValue(FilteredPayload(), PARTITION, 0, NOW)))
    step.poll()
    assert producer.pending == []
    assert forwarded.committable == [{PARTITION: 1}]

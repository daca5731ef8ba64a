"""The part of confluent-kafka's `Producer` that `RunDeadLetters` uses, writing to a
`LocalBroker` topic; deliveries are reported from `poll`/`flush` as librdkafka does, and a
test can hold them back or make them fail."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.local.backend import LocalBroker
from arroyo.types import Topic
from confluent_kafka import KafkaError

Delivery = Callable[[KafkaError | None, Any], None]


class LocalDlqProducer:
    def __init__(self, broker: LocalBroker[KafkaPayload], on_delivered: Callable[[int], None]):
        self.__broker = broker
        self.__on_delivered = on_delivered
        self.__queued: list[tuple[str, KafkaPayload, Delivery]] = []
        self.hold = False  # deliveries wait while set
        self.fail_with: KafkaError | None = None  # deliveries fail with this error

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        on_delivery: Delivery | None = None,
    ) -> None:
        assert on_delivery is not None
        self.__queued.append((topic, KafkaPayload(key, value or b"", headers or []), on_delivery))

    def poll(self, timeout: float | None = None) -> int:
        if self.hold:
            return 0
        queued, self.__queued = self.__queued, []
        for topic, payload, on_delivery in queued:
            if self.fail_with is not None:
                on_delivery(self.fail_with, None)
                continue
            self.__broker.get_producer().produce(Topic(topic), payload).result()
            headers = dict(payload.headers)
            self.__on_delivered(int(headers["original_offset"]))
            on_delivery(None, None)
        return len(queued)

    def flush(self, timeout: float | None = None) -> int:
        self.poll(0)
        return len(self.__queued)

    def __len__(self) -> int:
        return len(self.__queued)

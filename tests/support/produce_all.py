"""`ProduceAll`: Arroyo's `Produce`, except that `join` waits for every message in flight.

Arroyo's `Produce.join` stops at the first message whose delivery is not acknowledged yet:
it and everything after it are neither forwarded nor committed. That loses nothing (the
partition's next owner reads them again), but a rebalance right after a burst of messages
then repeats the burst. This step waits, within the join's timeout, for each delivery in
order, so a graceful rebalance repeats only what did not finish within `--join-timeout`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import TimeoutError as FutureTimeout

from arroyo.backends.abstract import Producer, ProducerFuture
from arroyo.backends.kafka import KafkaPayload
from arroyo.processing.strategies.abstract import MessageRejected, ProcessingStrategy
from arroyo.types import BrokerValue, FilteredPayload, Message, Topic, Value

logger = logging.getLogger(__name__)


class ProduceAll(ProcessingStrategy[FilteredPayload | KafkaPayload]):
    def __init__(
        self,
        producer: Producer[KafkaPayload],
        topic: Topic,
        next_step: ProcessingStrategy[FilteredPayload | KafkaPayload],
        max_in_flight: int = 10_000,
    ) -> None:
        self.__producer = producer
        self.__topic = topic
        self.__next_step = next_step
        self.__max_in_flight = max_in_flight
        self.__in_flight: deque[
            tuple[
                Message[FilteredPayload | KafkaPayload],
                ProducerFuture[BrokerValue[KafkaPayload]] | None,
            ]
        ] = deque()
        self.__closed = False

    def submit(self, message: Message[FilteredPayload | KafkaPayload]) -> None:
        assert not self.__closed
        if len(self.__in_flight) >= self.__max_in_flight:
            raise MessageRejected
        payload = message.payload
        delivery = (
            None
            if isinstance(payload, FilteredPayload)
            else self.__producer.produce(self.__topic, payload)
        )
        self.__in_flight.append((message, delivery))

    def poll(self) -> None:
        while self.__in_flight and self.__done(self.__in_flight[0][1]):
            self.__forward(0.0)
        self.__next_step.poll()

    @staticmethod
    def __done(delivery: ProducerFuture[BrokerValue[KafkaPayload]] | None) -> bool:
        return delivery is None or delivery.done()

    def __forward(self, timeout: float | None) -> None:
        message, delivery = self.__in_flight[0]
        if delivery is not None:
            produced = delivery.result(timeout)
            message = Message(Value(produced.payload, message.committable, message.timestamp))
        self.__in_flight.popleft()
        self.__next_step.submit(message)

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.__in_flight:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                self.__forward(remaining)
            except FutureTimeout:
                logger.warning("join timed out", extra={"in_flight": len(self.__in_flight)})
                break
            self.__next_step.poll()
        self.__next_step.close()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.__next_step.join(remaining)

    def close(self) -> None:
        self.__closed = True

    def terminate(self) -> None:
        self.__closed = True
        self.__next_step.terminate()

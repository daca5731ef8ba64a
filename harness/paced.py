"""A live stream: messages produced at a steady rate, in acknowledged slices."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from confluent_kafka import KafkaError, Message, Producer

from workers.common.settings import Settings

#: What librdkafka takes for a header list.
Headers = list[tuple[str, str | bytes | None]]


class Outbound(NamedTuple):
    """One message of a stream that has a key or headers (a bare `bytes` has neither)."""

    value: bytes
    key: bytes | None = None
    headers: Headers | None = None


class PacedProducer(threading.Thread):
    """Produces `messages` in slices of `slice_size` at `per_second`, each slice acknowledged.

    `messages` may be a lazy sequence (only `len` and indexing are used), so a long stream is
    made as it goes. One idempotent producer (`acks=all`) for the whole stream, whose
    deliveries may wait out a broker restart (`flush_timeout`); a stream that fell behind
    (a slice waited for a broker) catches up as fast as the brokers take it. `produced`
    counts the acknowledged messages: always the first `produced` of `messages`.
    """

    def __init__(
        self,
        stack: Settings,
        topic: str,
        messages: Sequence[bytes | Outbound],
        per_second: int,
        flush_timeout: float = 120.0,
        slice_size: int = 500,
        producer_config: dict[str, str | int] | None = None,
    ) -> None:
        super().__init__(name="paced-producer", daemon=True)
        self.__stack, self.__topic, self.__messages = stack, topic, messages
        self.__slice = slice_size
        self.__interval = slice_size / per_second
        self.__flush_timeout = flush_timeout
        self.__config = producer_config or {}
        self.produced = 0
        self.failures: list[str] = []
        self.__stopped = threading.Event()

    def stop(self) -> None:
        """End the stream after the slice in flight (the rest is never produced)."""
        self.__stopped.set()

    def run(self) -> None:
        producer = Producer(
            {**self.__stack.kafka_client_config(), "linger.ms": 5, "acks": "all",
             "enable.idempotence": True, "message.timeout.ms": int(self.__flush_timeout * 1000),
             **self.__config}
        )  # fmt: skip

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                self.failures.append(str(error))

        next_slice = time.monotonic()
        count = len(self.__messages)
        for start in range(0, count, self.__slice):
            if self.__stopped.is_set():
                return
            end = min(start + self.__slice, count)
            for index in range(start, end):
                message = self.__messages[index]
                if isinstance(message, bytes):
                    message = Outbound(message)
                self.__produce(producer, message, delivered)
            if producer.flush(self.__flush_timeout) != 0:
                self.failures.append("messages left undelivered")
                return
            if self.failures:
                return
            self.produced = end
            # Pacing the input (a stream's rate), not waiting for anything.
            next_slice += self.__interval
            time.sleep(max(next_slice - time.monotonic(), 0.0))

    def __produce(
        self,
        producer: Producer,
        message: Outbound,
        delivered: Callable[[KafkaError | None, Message], None],
    ) -> None:
        while True:
            try:
                producer.produce(
                    self.__topic,
                    value=message.value,
                    key=message.key,
                    headers=message.headers,
                    on_delivery=delivered,
                )
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.05)

"""A live stream: messages produced at a steady rate, in acknowledged slices."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from confluent_kafka import KafkaError, Message, Producer

from workers.common.settings import Settings

#: A stream behind its schedule sends at most this many slices before the next flush.
CATCH_UP_SLICES = 10
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
    deliveries may wait out a broker restart (`flush_timeout`). Slice `n` is due `n` slice
    intervals after the start; a stream that fell behind (a slice waited for a broker) sends
    what is due, up to `CATCH_UP_SLICES` slices per acknowledged round, until it is back on
    schedule. `produced` counts the acknowledged messages: always the first `produced` of
    `messages`.
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
        self.__started: float | None = None

    def stop(self) -> None:
        """End the stream after the slice in flight (the rest is never produced)."""
        self.__stopped.set()

    def backlog(self) -> int:
        """Messages the schedule says should be acknowledged by now and are not (0 before the
        stream starts and after it stops): how far a stalled stream is behind its rate."""
        if self.__started is None or self.__stopped.is_set() or not self.is_alive():
            return 0
        return max(self.__due(self.__started) - self.produced, 0)

    def __due(self, started: float) -> int:
        """Messages due by now: every slice whose time has come."""
        slices = int((time.monotonic() - started) / self.__interval) + 1
        return min(slices * self.__slice, len(self.__messages))

    def run(self) -> None:
        producer = Producer(
            {**self.__stack.kafka_client_config(), "linger.ms": 5, "acks": "all",
             "enable.idempotence": True, "message.timeout.ms": int(self.__flush_timeout * 1000),
             **self.__config}
        )  # fmt: skip

        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                self.failures.append(str(error))

        started = self.__started = time.monotonic()
        count = len(self.__messages)
        start = 0
        while start < count and not self.__stopped.is_set():
            end = min(
                max(self.__due(started), start + self.__slice),
                start + CATCH_UP_SLICES * self.__slice,
                count,
            )
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
            self.produced = start = end
            # Pacing the input (a stream's rate), not waiting for anything: the next slice is
            # due at `started + (end // slice) * interval`.
            next_slice = started + (end // self.__slice) * self.__interval
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

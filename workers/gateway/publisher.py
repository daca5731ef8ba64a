"""Chunks → `chunk-uploads` events, awaited until Kafka acknowledged every one.

One confluent-kafka `Producer` per process, shared by every request. A daemon thread serves
its delivery reports (`poll`) and resolves each request's asyncio futures through
`loop.call_soon_threadsafe`; a request returns only when all of its chunks are acknowledged,
and fails with `PublishError` if any is not (a delivery error, `message.timeout.ms`
passing while Kafka is unreachable, or the local queue staying full).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from confluent_kafka import KafkaError, Message, Producer

from workers.common.chunk_uploads import encode_headers
from workers.gateway.multipart import ReceivedChunk

logger = logging.getLogger(__name__)

POLL_SECONDS: Final = 0.1
QUEUE_FULL_WAIT_SECONDS: Final = 0.05
CLOSE_FLUSH_SECONDS: Final = 10.0


class PublishError(Exception):
    """Kafka did not acknowledge a chunk: a server fault (HTTP 503), never bad input."""


class ChunkPublisher:
    def __init__(self, producer: Producer, topic: str, timeout_seconds: float) -> None:
        """`timeout_seconds` bounds how long a request waits; the producer's
        `message.timeout.ms` should be a little shorter so librdkafka gives up first."""
        self.__producer = producer
        self.__topic = topic
        self.__timeout = timeout_seconds
        self.__stopping = threading.Event()
        self.__thread = threading.Thread(target=self.__serve, name="kafka-delivery", daemon=True)
        self.__thread.start()

    @property
    def topic(self) -> str:
        return self.__topic

    def __serve(self) -> None:
        while not self.__stopping.is_set():
            self.__producer.poll(POLL_SECONDS)

    async def publish(self, organization_id: int, chunks: list[ReceivedChunk]) -> None:
        """Produce every chunk; return once Kafka acknowledged all of them.

        Consumes `chunks`: each is dropped from the list once librdkafka holds its copy, so
        a request's bytes are in memory once, not twice, while Kafka acknowledges them."""
        if not chunks:
            return
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.__timeout
        futures: list[asyncio.Future[None]] = []
        uploaded_at = int(time.time() * 1000)
        chunks.reverse()
        while chunks:
            chunk = chunks.pop()
            future: asyncio.Future[None] = loop.create_future()
            futures.append(future)
            headers: list[tuple[str, str | bytes | None]] = list(
                encode_headers(organization_id, chunk.checksum, chunk.encoding, uploaded_at)
            )
            while True:
                try:
                    self.__producer.produce(
                        self.__topic,
                        value=chunk.value,
                        key=chunk.checksum.encode(),
                        headers=headers,
                        on_delivery=_resolver(loop, future),
                    )
                    break
                except BufferError:
                    if time.monotonic() > deadline:
                        _abandon(futures)
                        raise PublishError("the producer queue stayed full") from None
                    await asyncio.sleep(QUEUE_FULL_WAIT_SECONDS)
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*futures, return_exceptions=True),
                timeout=max(deadline - time.monotonic(), 0.0),
            )
        except TimeoutError:
            _abandon(futures)
            raise PublishError("Kafka did not acknowledge the chunks in time") from None
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            raise PublishError(
                f"{len(failures)} of {len(futures)} chunks not acknowledged: {failures[0]}"
            )

    def close(self) -> None:
        self.__stopping.set()
        self.__thread.join()
        remaining = self.__producer.flush(CLOSE_FLUSH_SECONDS)
        if remaining:
            logger.warning("chunks not acknowledged at shutdown", extra={"chunks": remaining})


def _abandon(futures: Sequence[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.cancel()


def _resolver(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[None]
) -> Callable[[KafkaError | None, Message], None]:
    def settle(error: KafkaError | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(PublishError(f"delivery failed: {error.str()}"))

    def delivered(error: KafkaError | None, _message: Message) -> None:
        loop.call_soon_threadsafe(settle, error)

    return delivered

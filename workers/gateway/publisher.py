"""Messages → Kafka, awaited until Kafka acknowledged every one: the chunks of an upload
(`chunk-uploads` events) and the files an assemble request enqueues (`assemble-requests`).

One confluent-kafka `Producer` per process, shared by every request and both topics
(`AcknowledgedProducer`). A daemon thread serves its delivery reports (`poll`) and resolves
each request's asyncio futures through `loop.call_soon_threadsafe`; a request returns only
when all of its messages are acknowledged, and fails with `PublishError` if any is not (a
delivery error, `message.timeout.ms` passing while Kafka is unreachable, or the local queue
staying full).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from confluent_kafka import KafkaError, Message, Producer

from workers.common.assemble_requests import assemble_request_key, encode_assemble_request
from workers.common.chunk_uploads import encode_headers
from workers.gateway.multipart import ReceivedChunk

logger = logging.getLogger(__name__)

POLL_SECONDS: Final = 0.1
QUEUE_FULL_WAIT_SECONDS: Final = 0.05
CLOSE_FLUSH_SECONDS: Final = 10.0

Headers = list[tuple[str, str | bytes | None]]


class PublishError(Exception):
    """Kafka did not acknowledge a message: a server fault (HTTP 503), never bad input."""


@dataclass(frozen=True)
class OutgoingMessage:
    key: bytes
    value: bytes
    headers: Headers | None = None


class AcknowledgedProducer:
    def __init__(self, producer: Producer, timeout_seconds: float) -> None:
        """`timeout_seconds` bounds how long a request waits; the producer's
        `message.timeout.ms` should be a little shorter so librdkafka gives up first."""
        self.__producer = producer
        self.__timeout = timeout_seconds
        self.__stopping = threading.Event()
        self.__thread = threading.Thread(target=self.__serve, name="kafka-delivery", daemon=True)
        self.__thread.start()

    def __serve(self) -> None:
        while not self.__stopping.is_set():
            self.__producer.poll(POLL_SECONDS)

    async def produce(self, topic: str, messages: Iterator[OutgoingMessage]) -> int:
        """Produce every message of `messages` (taken one at a time, so a caller can drop
        each one once librdkafka holds its copy); return their count once Kafka acknowledged
        all of them."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.__timeout
        futures: list[asyncio.Future[None]] = []
        for message in messages:
            future: asyncio.Future[None] = loop.create_future()
            futures.append(future)
            while True:
                try:
                    self.__producer.produce(
                        topic,
                        value=message.value,
                        key=message.key,
                        headers=message.headers,
                        on_delivery=_resolver(loop, future),
                    )
                    break
                except BufferError:
                    if time.monotonic() > deadline:
                        _abandon(futures)
                        raise PublishError("the producer queue stayed full") from None
                    await asyncio.sleep(QUEUE_FULL_WAIT_SECONDS)
            del message
        if not futures:
            return 0
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*futures, return_exceptions=True),
                timeout=max(deadline - time.monotonic(), 0.0),
            )
        except TimeoutError:
            _abandon(futures)
            raise PublishError("Kafka did not acknowledge the messages in time") from None
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            raise PublishError(
                f"{len(failures)} of {len(futures)} messages not acknowledged: {failures[0]}"
            )
        return len(futures)

    def close(self) -> None:
        self.__stopping.set()
        self.__thread.join()
        remaining = self.__producer.flush(CLOSE_FLUSH_SECONDS)
        if remaining:
            logger.warning("messages not acknowledged at shutdown", extra={"messages": remaining})


class ChunkPublisher:
    """An upload's chunks → `chunk-uploads` events (docs/reference.md, Chunk-upload events)."""

    def __init__(self, producer: AcknowledgedProducer, topic: str) -> None:
        self.__producer = producer
        self.topic = topic

    async def publish(self, organization_id: int, chunks: list[ReceivedChunk]) -> None:
        """Produce every chunk; return once Kafka acknowledged all of them.

        Consumes `chunks`: each is dropped from the list once librdkafka holds its copy, so
        a request's bytes are in memory once, not twice, while Kafka acknowledges them."""
        uploaded_at = int(time.time() * 1000)

        def messages() -> Iterator[OutgoingMessage]:
            chunks.reverse()
            while chunks:
                chunk = chunks.pop()
                yield OutgoingMessage(
                    chunk.checksum.encode(),
                    chunk.value,
                    list(
                        encode_headers(organization_id, chunk.checksum, chunk.encoding, uploaded_at)
                    ),
                )

        await self.__producer.produce(self.topic, messages())


@dataclass(frozen=True)
class EnqueuedFile:
    """A file whose `assemble_tasks` row the gateway holds: what the assemble worker gets."""

    task_id: int
    organization_id: int
    checksum: str


class AssembleRequestPublisher:
    """Files to assemble → `assemble-requests` (workers/common/assemble_requests.py)."""

    def __init__(self, producer: AcknowledgedProducer, topic: str) -> None:
        self.__producer = producer
        self.topic = topic

    async def publish(self, files: Sequence[EnqueuedFile]) -> None:
        await self.__producer.produce(
            self.topic,
            (
                OutgoingMessage(
                    assemble_request_key(file.checksum),
                    encode_assemble_request(file.task_id, file.organization_id, file.checksum),
                )
                for file in files
            ),
        )


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

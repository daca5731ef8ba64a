"""`workers chunks produce`: files → 8 MiB chunks → chunk-upload events, acknowledged."""

from __future__ import annotations

import gzip
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from workers.common.chunk_uploads import MAX_CHUNK_SIZE, Encoding, encode_headers
from workers.common.producing import produce_waiting

DELIVERY_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class Chunk:
    checksum: str
    value: bytes
    size: int


@dataclass
class UploadReport:
    files: int = 0
    chunks: int = 0
    bytes: int = 0
    failed: int = 0
    first_error: str | None = None


def iter_chunks(path: Path, use_gzip: bool, chunk_size: int = MAX_CHUNK_SIZE) -> Iterator[Chunk]:
    with path.open("rb") as source:
        while data := source.read(chunk_size):
            checksum = hashlib.sha1(data, usedforsecurity=False).hexdigest()
            value = gzip.compress(data, compresslevel=6, mtime=0) if use_gzip else data
            yield Chunk(checksum, value, len(data))


class ChunkProducer:
    """Produces chunk events and waits until Kafka acknowledged every one."""

    def __init__(self, config: dict[str, Any], topic: str) -> None:
        self.__producer = Producer(config)
        self.__topic = topic
        self.__report = UploadReport()

    def send(
        self,
        chunk: Chunk,
        organization_id: int,
        encoding: Encoding,
        on_delivered: Callable[[int], None] = lambda size: None,
    ) -> None:
        def delivered(error: KafkaError | None, _message: Message) -> None:
            if error is not None:
                self.__report.failed += 1
                self.__report.first_error = self.__report.first_error or str(error)
            else:
                on_delivered(chunk.size)

        headers: list[tuple[str, str | bytes | None]] = list(
            encode_headers(organization_id, chunk.checksum, encoding, int(time.time() * 1000))
        )
        produce_waiting(
            self.__producer,
            self.__topic,
            value=chunk.value,
            key=chunk.checksum.encode(),
            headers=headers,
            on_delivery=delivered,
        )
        self.__report.chunks += 1
        self.__report.bytes += chunk.size

    def finish(self) -> UploadReport:
        remaining = self.__producer.flush(DELIVERY_TIMEOUT_SECONDS)
        if remaining:
            self.__report.failed += remaining
            self.__report.first_error = self.__report.first_error or (
                f"{remaining} chunks not acknowledged within {DELIVERY_TIMEOUT_SECONDS:.0f} s"
            )
        return self.__report

"""The request shapes and their chunks: built once per shape, sent by both variants."""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from typing import Final

from harness.gateway import multipart_body
from workers.common.chunk_uploads import Encoding

KIB: Final = 1024
MIB: Final = 1024 * 1024


@dataclass(frozen=True)
class Shape:
    label: str
    chunk_size: int
    chunks_per_request: int
    requests: int
    #: `file_gzip` parts of hex text (about 2:1), as sentry-cli sends; else raw random bytes.
    gzip: bool = False

    @property
    def chunks(self) -> int:
        return self.chunks_per_request * self.requests


@dataclass(frozen=True)
class TimedRun:
    """One variant's run of a shape: how long it took, and the rates that gives."""

    shape: Shape
    seconds: float

    @property
    def chunks_per_second(self) -> float:
        return self.shape.chunks / self.seconds

    @property
    def mb_per_second(self) -> float:
        """Decompressed chunk bytes per second (both variants count the same bytes)."""
        return self.shape.chunks * self.shape.chunk_size / self.seconds / 1e6


@dataclass(frozen=True)
class Chunk:
    """One chunk as the gateway puts it on Kafka: its value as sent, sha1 and encoding."""

    field: str
    checksum: str
    value: bytes
    encoding: Encoding


@dataclass(frozen=True)
class Workload:
    shape: Shape
    #: The chunks of each request, in request order.
    requests: list[list[Chunk]]
    #: Each request's (multipart body, content type), built from the same chunks.
    bodies: list[tuple[bytes, str]]

    @property
    def value_bytes(self) -> int:
        """Bytes of chunk values as sent (what Kafka stores): less than the chunks' for gzip."""
        return sum(len(chunk.value) for request in self.requests for chunk in request)


def _chunk(shape: Shape) -> Chunk:
    if shape.gzip:
        data = os.urandom(shape.chunk_size // 2).hex().encode()
        value = gzip.compress(data, compresslevel=1, mtime=0)
        return Chunk("file_gzip", hashlib.sha1(data).hexdigest(), value, "gzip")
    data = os.urandom(shape.chunk_size)
    return Chunk("file", hashlib.sha1(data).hexdigest(), data, "identity")


def build(shape: Shape) -> Workload:
    """Random content, so nothing deduplicates; the same bytes for the gateway and the
    ceiling, and for every repeat (each run has a fresh topic and organization)."""
    requests = [
        [_chunk(shape) for _ in range(shape.chunks_per_request)] for _ in range(shape.requests)
    ]
    bodies = [
        multipart_body([(chunk.field, chunk.checksum, chunk.value) for chunk in request])
        for request in requests
    ]
    return Workload(shape, requests, bodies)

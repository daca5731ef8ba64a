"""Streaming `multipart/form-data` → verified chunks, with bounded memory
(docs/reference.md, Upload requests).

`ChunkReader` is fed the request body piece by piece (`feed`) and raises `UploadRejected`
as soon as a limit is crossed, before reading further:

- the part count is checked when a part *begins*: the 65th part is refused unread;
- `file_gzip` parts are decompressed incrementally with a hard cap of chunk limit + 1 byte
  (`zlib.decompressobj(...).decompress(data, max_length)`), so a decompression bomb never
  expands further than that; the decompressed bytes are hashed and dropped;
- the request's decompressed total is checked after every piece;
- the raw body is capped too (`UploadLimits.max_body_bytes`).

What is kept per chunk is its value as sent (raw bytes, or the gzip bytes for `file_gzip`),
which is what goes to Kafka: at most about the request limit per request.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass, field
from typing import Final

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

from workers.common.chunk_uploads import Encoding
from workers.gateway.options import UploadLimits

RAW_FIELD: Final = "file"
GZIP_FIELD: Final = "file_gzip"
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
_CHECKSUM = re.compile(r"^[0-9a-f]{40}$")
# Headers of one part beyond this are refused (a part has two or three short ones).
_MAX_PART_HEADER_BYTES: Final = 4096


class UploadRejected(Exception):
    """Bad input: answered with HTTP 400 `{"error": message}`; `reason` is a metric label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


CHUNK_TOO_LARGE: Final = ("chunk_too_large", "Chunk size too large")
REQUEST_TOO_LARGE: Final = ("request_too_large", "Request too large")
TOO_MANY_CHUNKS: Final = ("too_many_chunks", "Too many chunks")
CHECKSUM_MISMATCH: Final = ("checksum_mismatch", "Checksum mismatch")
CORRUPT_GZIP: Final = ("corrupt_gzip", "Corrupt gzip chunk")
MISSING_FILENAME: Final = ("missing_filename", "Chunk without a filename")
UNEXPECTED_FIELD: Final = ("unexpected_field", "Unexpected form field")
EMPTY_CHUNK: Final = ("empty_chunk", "Empty chunk")
MALFORMED: Final = ("malformed_body", "Malformed multipart body")
NOT_MULTIPART: Final = ("not_multipart", "Expected multipart/form-data")


def reject(kind: tuple[str, str]) -> UploadRejected:
    return UploadRejected(*kind)


@dataclass(frozen=True)
class ReceivedChunk:
    checksum: str
    #: The bytes as sent: raw, or gzip for `encoding == "gzip"`.
    value: bytes
    encoding: Encoding
    #: Decompressed size.
    size: int


def boundary_of(content_type: str | None) -> bytes:
    if not content_type:
        raise reject(NOT_MULTIPART)
    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise reject(NOT_MULTIPART)
    return boundary


@dataclass
class _Part:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    header_bytes: int = 0
    field_name: bytes = b""
    value: bytearray = field(default_factory=bytearray)
    size: int = 0
    hasher: hashlib._Hash = field(default_factory=lambda: hashlib.sha1(usedforsecurity=False))
    checksum: str = ""
    encoding: Encoding = "identity"
    inflater: zlib._Decompress | None = None


class ChunkReader:
    """Feed the body with `feed`, then `finish()` returns the verified chunks in order."""

    def __init__(self, boundary: bytes, limits: UploadLimits) -> None:
        self.__limits = limits
        self.__parts = 0
        self.__body_bytes = 0
        self.__total = 0
        self.__chunks: list[ReceivedChunk] = []
        self.__part: _Part | None = None
        self.__field = bytearray()
        self.__value = bytearray()
        self.__ended = False
        self.__parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self.__on_part_begin,
                "on_header_field": self.__on_header_field,
                "on_header_value": self.__on_header_value,
                "on_header_end": self.__on_header_end,
                "on_headers_finished": self.__on_headers_finished,
                "on_part_data": self.__on_part_data,
                "on_part_end": self.__on_part_end,
                "on_end": self.__on_end,
            },
            max_header_count=4,
        )

    def feed(self, data: bytes) -> None:
        self.__body_bytes += len(data)
        if self.__body_bytes > self.__limits.max_body_bytes:
            raise reject(REQUEST_TOO_LARGE)
        try:
            self.__parser.write(data)
        except UploadRejected:
            raise
        except Exception as error:
            # The parser's own errors (bad boundary, too many headers...) are bad input.
            raise reject(MALFORMED) from error

    def finish(self) -> list[ReceivedChunk]:
        if self.__body_bytes == 0:
            return []
        try:
            self.__parser.finalize()
        except Exception as error:
            raise reject(MALFORMED) from error
        if self.__part is not None or not self.__ended:
            raise reject(MALFORMED)
        return self.__chunks

    # -- parser callbacks (exceptions raised here propagate out of `write`) -----------------

    def __on_part_begin(self) -> None:
        self.__parts += 1
        if self.__parts > self.__limits.chunks_per_request:
            raise reject(TOO_MANY_CHUNKS)
        self.__part = _Part()

    def __current(self) -> _Part:
        if self.__part is None:
            raise reject(MALFORMED)
        return self.__part

    def __on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.__grow(self.__field, data[start:end])

    def __on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.__grow(self.__value, data[start:end])

    def __grow(self, buffer: bytearray, piece: bytes) -> None:
        part = self.__current()
        part.header_bytes += len(piece)
        if part.header_bytes > _MAX_PART_HEADER_BYTES:
            raise reject(MALFORMED)
        buffer.extend(piece)

    def __on_header_end(self) -> None:
        part = self.__current()
        part.headers.append((bytes(self.__field).lower(), bytes(self.__value)))
        self.__field.clear()
        self.__value.clear()

    def __on_headers_finished(self) -> None:
        part = self.__current()
        disposition = next((v for k, v in part.headers if k == b"content-disposition"), None)
        if disposition is None:
            raise reject(MALFORMED)
        kind, params = parse_options_header(disposition)
        name = params.get(b"name", b"")
        if kind != b"form-data" or name not in (RAW_FIELD.encode(), GZIP_FIELD.encode()):
            raise reject(UNEXPECTED_FIELD)
        filename = params.get(b"filename")
        if not filename:
            raise reject(MISSING_FILENAME)
        part.field_name = name
        part.checksum = filename.decode("latin-1")
        if name == GZIP_FIELD.encode():
            part.encoding = "gzip"
            part.inflater = zlib.decompressobj(_GZIP_WBITS)

    def __on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.__current()
        piece = data[start:end]
        part.value.extend(piece)
        if part.inflater is None:
            self.__count(part, piece)
        else:
            self.__inflate(part, piece)

    def __inflate(self, part: _Part, piece: bytes) -> None:
        pending = piece
        while pending:
            inflater = part.inflater
            assert inflater is not None
            if inflater.eof:
                # A further gzip member (concatenated members are valid gzip).
                inflater = part.inflater = zlib.decompressobj(_GZIP_WBITS)
            try:
                # Never more than one byte past what the limits allow.
                room = min(
                    self.__limits.chunk_size - part.size,
                    self.__limits.max_request_size - self.__total,
                )
                out = inflater.decompress(pending, room + 1)
            except zlib.error as error:
                raise reject(CORRUPT_GZIP) from error
            self.__count(part, out)
            if inflater.unconsumed_tail:
                # Output stopped at the cap with input left: over a limit (checked above).
                raise reject(CHUNK_TOO_LARGE)
            pending = inflater.unused_data if inflater.eof else b""

    def __count(self, part: _Part, data: bytes) -> None:
        part.size += len(data)
        self.__total += len(data)
        if part.size > self.__limits.chunk_size:
            raise reject(CHUNK_TOO_LARGE)
        if self.__total > self.__limits.max_request_size:
            raise reject(REQUEST_TOO_LARGE)
        part.hasher.update(data)

    def __on_part_end(self) -> None:
        part = self.__current()
        if part.inflater is not None and not part.inflater.eof:
            raise reject(CORRUPT_GZIP)
        if part.size == 0:
            raise reject(EMPTY_CHUNK)
        if _CHECKSUM.match(part.checksum) is None or part.hasher.hexdigest() != part.checksum:
            raise reject(CHECKSUM_MISMATCH)
        self.__chunks.append(
            ReceivedChunk(part.checksum, bytes(part.value), part.encoding, part.size)
        )
        self.__part = None

    def __on_end(self) -> None:
        self.__ended = True

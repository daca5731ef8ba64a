"""Streaming `multipart/form-data` → verified chunks, with bounded memory
(docs/reference.md, Upload requests).

`ChunkReader` is fed the request body piece by piece (`feed`) and raises `UploadRejected`
as soon as a limit is crossed, before reading further:

- the part count is checked when a part *begins*: the 65th part is refused unread;
- each part is decoded as it arrives by the chunk decoder blob-ingest uses too
  (`workers/common/chunk_decoder.py`: `file_gzip` parts as gzip, `file` parts as sent), with
  a hard cap of the limit + 1 byte, so a decompression bomb never expands further than that;
  the decoded bytes are hashed and dropped, and the part as sent is capped as well so it
  always fits in a Kafka message;
- the request's decompressed total is checked after every piece;
- the raw body is capped too (`UploadLimits.max_body_bytes`).

What is kept per chunk is its value as sent (raw bytes, or the gzip bytes for `file_gzip`),
which is what goes to Kafka: at most about the request limit per request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header

from workers.common import chunk_decoder
from workers.common.chunk_decoder import ChunkDecoder
from workers.common.chunk_uploads import ChunkEventError, Encoding
from workers.gateway.options import UploadLimits

RAW_FIELD: Final = "file"
GZIP_FIELD: Final = "file_gzip"
_CHECKSUM = re.compile(r"[0-9a-f]{40}")
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
CORRUPT_GZIP: Final = ("corrupt_gzip", "Invalid gzip payload")
CORRUPT_ZSTD: Final = ("corrupt_zstd", "Invalid zstd payload")
UNSUPPORTED_ENCODING: Final = ("unsupported_encoding", "Unsupported Content-Encoding")
CONFLICTING_ENCODING: Final = (
    "conflicting_encoding",
    "Cannot combine Content-Encoding with file_gzip field",
)
#: The request's `Content-Encoding` → how its `file` parts are encoded (docs/reference.md,
#: Upload requests). No header means raw.
REQUEST_ENCODINGS: Final[dict[str, Encoding]] = {"": "identity", "gzip": "gzip", "zstd": "zstd"}


def file_part_encoding(content_encoding: str | None) -> Encoding:
    """The encoding of `file` parts from the request's `Content-Encoding` header (any case);
    an unknown one is refused before the body is read."""
    encoding = REQUEST_ENCODINGS.get((content_encoding or "").strip().lower())
    if encoding is None:
        raise reject(UNSUPPORTED_ENCODING)
    return encoding


MISSING_FILENAME: Final = ("missing_filename", "Chunk without a filename")
UNEXPECTED_FIELD: Final = ("unexpected_field", "Unexpected form field")
EMPTY_CHUNK: Final = ("empty_chunk", "Empty chunk")
MALFORMED: Final = ("malformed_body", "Malformed multipart body")
NOT_MULTIPART: Final = ("not_multipart", "Expected multipart/form-data")


def reject(kind: tuple[str, str]) -> UploadRejected:
    return UploadRejected(*kind)


# The chunk decoder's verdicts as answers: what blob-ingest would dead-letter is a 400 here.
_DECODER_REJECTIONS: Final = {
    chunk_decoder.CHUNK_TOO_LARGE: CHUNK_TOO_LARGE,
    chunk_decoder.VALUE_TOO_LARGE: CHUNK_TOO_LARGE,
    chunk_decoder.REQUEST_TOO_LARGE: REQUEST_TOO_LARGE,
    chunk_decoder.CORRUPT_GZIP: CORRUPT_GZIP,
    chunk_decoder.CORRUPT_ZSTD: CORRUPT_ZSTD,
    chunk_decoder.EMPTY_CHUNK: EMPTY_CHUNK,
    chunk_decoder.CHECKSUM_MISMATCH: CHECKSUM_MISMATCH,
}


def decoder_rejection(error: ChunkEventError) -> UploadRejected:
    return reject(_DECODER_REJECTIONS.get(error.code, MALFORMED))


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
    #: The part as sent, piece by piece (joined once at its end: no buffer regrowth).
    pieces: list[memoryview] = field(default_factory=list)
    checksum: str = ""
    encoding: Encoding = "identity"
    decoder: ChunkDecoder | None = None


class ChunkReader:
    """Feed the body with `feed`, then `finish()` returns the verified chunks in order.

    `content_encoding`: the request's `Content-Encoding` header, which says how its `file`
    parts are encoded (`file_gzip` parts are gzip, and may not be combined with it).
    """

    def __init__(
        self, boundary: bytes, limits: UploadLimits, content_encoding: str | None = None
    ) -> None:
        self.__file_encoding = file_part_encoding(content_encoding)
        self.__encoded_request = bool((content_encoding or "").strip())
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

    def feed_all(self, pieces: list[bytes]) -> None:
        """`feed` each piece in turn (what the gateway hands a worker thread at once)."""
        for piece in pieces:
            self.feed(piece)

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
            if self.__encoded_request:
                raise reject(CONFLICTING_ENCODING)
            part.encoding = "gzip"
        else:
            part.encoding = self.__file_encoding
        part.decoder = ChunkDecoder(part.encoding, self.__limits.chunk_size)

    def __decoder(self, part: _Part) -> ChunkDecoder:
        if part.decoder is None:
            raise reject(MALFORMED)
        return part.decoder

    def __on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.__current()
        # A view, not a copy: `data` is a body piece as received (bytes, never reused), and the
        # part's pieces are copied once, when they are joined into the chunk's value.
        piece = memoryview(data)[start:end]
        part.pieces.append(piece)
        try:
            self.__total += self.__decoder(part).feed(
                piece, room=self.__limits.max_request_size - self.__total
            )
        except ChunkEventError as error:
            raise decoder_rejection(error) from error

    def __on_part_end(self) -> None:
        part = self.__current()
        decoder = self.__decoder(part)
        try:
            if _CHECKSUM.fullmatch(part.checksum) is None:
                decoder.finish()  # a corrupt or empty part says so first
                raise reject(CHECKSUM_MISMATCH)
            decoded = decoder.finish(part.checksum)
        except ChunkEventError as error:
            raise decoder_rejection(error) from error
        self.__chunks.append(
            ReceivedChunk(part.checksum, b"".join(part.pieces), part.encoding, decoded.size)
        )
        self.__part = None

    def __on_end(self) -> None:
        self.__ended = True

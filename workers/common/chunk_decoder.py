"""One chunk's bytes as sent → its bytes, size and sha1: the verdict the gateway and
blob-ingest share (docs/reference.md, Chunk encodings).

The gateway feeds a part piece by piece as the body arrives; blob-ingest feeds the Kafka
value in one piece. Both use `ChunkDecoder`, so what the gateway answers 200 for,
blob-ingest persists, and what blob-ingest would dead-letter, the gateway refuses.

Encodings, as the chunk was sent:
- `identity`: the bytes themselves;
- `gzip`: one or more gzip members (RFC 1952), each possibly followed by zero bytes of
  padding, exactly what Python's `gzip.decompress` accepts; anything else after a member,
  or a member cut short, is corrupt;
- `zstd`: one or more complete zstd frames and nothing after them.

Bounds: the decoded size never goes past `limit`: at most `limit + 1` bytes are kept (gzip
produces no more; zstd, whose streaming decoder has no output cap, at most two 128 KiB blocks
more before they are cut), whatever the stream claims, so a decompression bomb costs about
one limit of CPU and two of memory at the peak (zlib copies its output blocks into one bytes
object before returning it). The bytes as sent never go past `max_wire_bytes`, so nothing
too large for a Kafka message is produced. A caller with a wider budget (the gateway's
request total) passes `room` to `feed`.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from typing import Final, Protocol, TypeAlias

import zstandard

from workers.common.chunk_uploads import (
    MAX_CHUNK_SIZE,
    MAX_CHUNK_VALUE_BYTES,
    ChunkEventError,
    Encoding,
)

#: What the decoder reads and the identity stage returns: a body piece, or a view of one.
Buffer: TypeAlias = bytes | memoryview

CHUNK_TOO_LARGE: Final = "chunk_too_large"
VALUE_TOO_LARGE: Final = "value_too_large"
REQUEST_TOO_LARGE: Final = "request_too_large"
CORRUPT_GZIP: Final = "corrupt_gzip"
CORRUPT_ZSTD: Final = "corrupt_zstd"
EMPTY_CHUNK: Final = "empty_chunk"
CHECKSUM_MISMATCH: Final = "checksum_mismatch"

_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS
# A zstd block decodes to at most 128 KiB and takes at least 4 bytes (a 3-byte header and
# one RLE byte): feeding `4 * n` bytes produces at most `n` blocks' worth of output.
_ZSTD_BLOCK_BYTES: Final = 128 * 1024
_ZSTD_MIN_BLOCK_INPUT: Final = 4
# hashlib lets go of the GIL while hashing 2048 bytes or more. For a small piece, getting it
# back costs more than the hashing whenever other threads want it (blob-ingest's consumer
# thread's validation took 2.2 s per 20,000 chunks of 4 KiB with it, 0.8 s without), so such
# pieces are hashed in slices below that size; larger ones are hashed in one call, letting
# other threads run meanwhile.
_HASH_SLICE_BYTES: Final = 2047
_HASH_WITH_GIL_BELOW: Final = 16 * 1024


@dataclass(frozen=True)
class DecodedChunk:
    size: int
    sha1: str


class _Stage(Protocol):
    def decompress(self, data: Buffer, room: int) -> Buffer:
        """At most `room + 1` bytes; fewer means all of `data` was consumed."""
        ...

    def finish(self) -> None: ...


class _Identity:
    def decompress(self, data: Buffer, room: int) -> Buffer:
        return data[: room + 1]

    def finish(self) -> None:
        return None


class _Gzip:
    """gzip members, with zero padding between and after them (`gzip.decompress`'s rule)."""

    def __init__(self) -> None:
        self.__member: zlib._Decompress | None = None  # None: between members
        self.__seen_member = False

    def decompress(self, data: Buffer, room: int) -> Buffer:
        # Joined once at the end, and a single piece (nearly always) is not copied at all:
        # gathering them in a bytearray and copying that out held three copies of up to
        # 8 MiB at once.
        pieces: list[bytes] = []
        produced = 0
        pending = data
        while pending and produced <= room:
            member = self.__member
            if member is None:
                pending = bytes(pending).lstrip(b"\x00") if self.__seen_member else pending
                if not pending:
                    break
                member = self.__member = zlib.decompressobj(_GZIP_WBITS)
                self.__seen_member = True
            try:
                piece = member.decompress(pending, room - produced + 1)
            except zlib.error as error:
                raise ChunkEventError(CORRUPT_GZIP, f"gzip stream is invalid ({error})") from None
            pieces.append(piece)
            produced += len(piece)
            if member.unconsumed_tail or not member.eof:
                break  # stopped at the cap, or the member goes on in the next piece
            pending = member.unused_data
            self.__member = None
        return b"".join(pieces)

    def finish(self) -> None:
        if self.__member is not None or not self.__seen_member:
            raise ChunkEventError(CORRUPT_GZIP, "gzip stream is truncated")


class _Zstd:
    """Complete zstd frames, back to back. zstandard's streaming decoder has no output cap,
    so input goes in slices small enough that one slice cannot decode past the cap."""

    def __init__(self) -> None:
        # A frame may ask for a window of up to 2 GiB; a chunk never needs more than twice
        # its own size (what a streaming compressor might pick for 8 MiB of input).
        self.__decompressor = zstandard.ZstdDecompressor(max_window_size=2 * MAX_CHUNK_SIZE)
        self.__frame: zstandard.ZstdDecompressionObj | None = None
        self.__seen_frame = False

    def decompress(self, data: Buffer, room: int) -> Buffer:
        pieces: list[bytes] = []
        produced = 0
        position = 0
        while position < len(data):
            left = room + 1 - produced
            if left <= 0:
                break
            frame = self.__frame
            if frame is None:
                frame = self.__frame = self.__decompressor.decompressobj()
                self.__seen_frame = True
            step = _ZSTD_MIN_BLOCK_INPUT * max(1, left // _ZSTD_BLOCK_BYTES)
            piece = data[position : position + step]
            position += len(piece)
            try:
                decoded = frame.decompress(piece)
            except zstandard.ZstdError as error:
                raise ChunkEventError(CORRUPT_ZSTD, f"zstd stream is invalid ({error})") from None
            pieces.append(decoded)
            produced += len(decoded)
            if frame.eof:
                # The rest of the slice belongs to the next frame.
                position -= len(frame.unused_data)
                self.__frame = None
        output = b"".join(pieces)
        return output if len(output) <= room + 1 else output[: room + 1]

    def finish(self) -> None:
        if self.__frame is not None or not self.__seen_frame:
            raise ChunkEventError(CORRUPT_ZSTD, "zstd stream is truncated")


def _stage(encoding: Encoding) -> _Stage:
    if encoding == "gzip":
        return _Gzip()
    if encoding == "zstd":
        return _Zstd()
    return _Identity()


class ChunkDecoder:
    """Feed the chunk as sent with `feed`, then `finish()` gives its size and sha1.

    Every error is a `ChunkEventError` with a fixed code (the DLQ reason of blob-ingest, the
    metric label of the gateway): `chunk_too_large` (decoded size over `limit`),
    `value_too_large` (bytes as sent over `max_wire_bytes`), `request_too_large` (over the
    caller's `room`), `corrupt_gzip`, `corrupt_zstd`, `empty_chunk`, `checksum_mismatch`.
    """

    def __init__(
        self,
        encoding: Encoding,
        limit: int = MAX_CHUNK_SIZE,
        max_wire_bytes: int = MAX_CHUNK_VALUE_BYTES,
        keep: bool = False,
    ) -> None:
        self.__stage = _stage(encoding)
        self.__limit = limit
        self.__max_wire = max_wire_bytes
        self.__wire = 0
        self.__size = 0
        self.__hasher = hashlib.sha1(usedforsecurity=False)
        self.__kept: list[Buffer] | None = [] if keep else None

    @property
    def size(self) -> int:
        """Decoded bytes so far."""
        return self.__size

    def feed(self, data: Buffer, room: int | None = None) -> int:
        """Decode `data`; returns how many decoded bytes it added.

        `room`: the caller's own budget for this call (the gateway's request total); going
        past it raises `request_too_large`, unless the chunk's own limit is crossed first.
        """
        self.__wire += len(data)
        if self.__wire > self.__max_wire:
            raise ChunkEventError(VALUE_TOO_LARGE, f"chunk as sent exceeds {self.__max_wire} bytes")
        own_room = self.__limit - self.__size
        cap = own_room if room is None else min(own_room, room)
        output = self.__stage.decompress(data, cap)
        if len(output) > own_room:
            raise ChunkEventError(CHUNK_TOO_LARGE, f"decoded chunk exceeds {self.__limit} bytes")
        if len(output) > cap:
            raise ChunkEventError(REQUEST_TOO_LARGE, "decoded request exceeds its limit")
        self.__size += len(output)
        _hash(self.__hasher, output)
        if self.__kept is not None:
            self.__kept.append(output)
        return len(output)

    def finish(self, claimed_sha1: str | None = None) -> DecodedChunk:
        """Checks the stream is complete and non-empty (and its sha1, when one is claimed)."""
        self.__stage.finish()
        if self.__size == 0:
            raise ChunkEventError(EMPTY_CHUNK, "chunk has no bytes")
        actual = self.__hasher.hexdigest()
        if claimed_sha1 is not None and actual != claimed_sha1:
            raise ChunkEventError(
                CHECKSUM_MISMATCH, f"sha1 of the chunk is {actual}, claimed {claimed_sha1}"
            )
        return DecodedChunk(self.__size, actual)

    @property
    def data(self) -> bytes:
        """The decoded bytes (only with `keep=True`)."""
        assert self.__kept is not None, "ChunkDecoder(keep=True) keeps the decoded bytes"
        return b"".join(self.__kept)


def _hash(hasher: hashlib._Hash, data: Buffer) -> None:
    if _HASH_SLICE_BYTES < len(data) < _HASH_WITH_GIL_BELOW:
        view = memoryview(data)
        for start in range(0, len(view), _HASH_SLICE_BYTES):
            hasher.update(view[start : start + _HASH_SLICE_BYTES])
    else:
        hasher.update(data)


def decode_chunk(
    encoding: Encoding,
    value: bytes,
    claimed_sha1: str,
    limit: int = MAX_CHUNK_SIZE,
    max_wire_bytes: int = MAX_CHUNK_VALUE_BYTES,
) -> bytes:
    """Decode a whole chunk value and check it; returns its decoded bytes."""
    if encoding == "identity" and 0 < len(value) <= min(limit, max_wire_bytes):
        # The common case without a decoder (a third of a 4 KiB chunk's cost on blob-ingest's
        # consumer thread); anything it would refuse goes through the decoder for its error.
        hasher = hashlib.sha1(usedforsecurity=False)
        _hash(hasher, value)
        if hasher.hexdigest() == claimed_sha1:
            return value
    decoder = ChunkDecoder(encoding, limit, max_wire_bytes, keep=True)
    decoder.feed(value)
    decoder.finish(claimed_sha1)
    return decoder.data

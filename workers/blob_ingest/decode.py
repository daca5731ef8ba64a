"""Turning a chunk event into verified bytes: bounded decompression and the sha1 check.

Decompression never produces more than `MAX_CHUNK_SIZE + 1` bytes, whatever the gzip
stream claims, so a decompression bomb costs at most 8 MiB of memory before it is refused.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

from workers.common.chunk_uploads import MAX_CHUNK_SIZE, ChunkEventError, ChunkHeaders

_GZIP_WBITS = 16 + zlib.MAX_WBITS


@dataclass(frozen=True)
class VerifiedChunk:
    organization_id: int
    checksum: str
    data: bytes
    uploaded_at_ms: int
    # Size of the Kafka message value (compressed or not), for metrics.
    wire_size: int


def gunzip_bounded(data: bytes, limit: int = MAX_CHUNK_SIZE) -> bytes:
    """Decompress one gzip member, producing at most `limit + 1` bytes."""
    decompressor = zlib.decompressobj(_GZIP_WBITS)
    try:
        output = decompressor.decompress(data, limit + 1)
    except zlib.error as error:
        raise ChunkEventError("corrupt_gzip", f"gzip stream is invalid ({error})") from None
    if len(output) > limit:
        raise ChunkEventError("chunk_too_large", f"decompressed chunk exceeds {limit} bytes")
    if not decompressor.eof:
        raise ChunkEventError("corrupt_gzip", "gzip stream is truncated")
    if decompressor.unused_data:
        raise ChunkEventError("corrupt_gzip", "unexpected data after the gzip stream")
    return output


def verify_chunk(headers: ChunkHeaders, value: bytes, limit: int = MAX_CHUNK_SIZE) -> VerifiedChunk:
    if headers.encoding == "gzip":
        data = gunzip_bounded(value, limit)
    else:
        if len(value) > limit:
            raise ChunkEventError("chunk_too_large", f"chunk exceeds {limit} bytes")
        data = value
    if not data:
        raise ChunkEventError("empty_chunk", "chunk has no bytes")
    actual = hashlib.sha1(data, usedforsecurity=False).hexdigest()
    if actual != headers.checksum:
        raise ChunkEventError(
            "checksum_mismatch", f"sha1 of the chunk is {actual}, claimed {headers.checksum}"
        )
    return VerifiedChunk(
        headers.organization_id, headers.checksum, data, headers.uploaded_at_ms, len(value)
    )

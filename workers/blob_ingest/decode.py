"""Turning a chunk event into verified bytes with the shared chunk decoder
(`workers/common/chunk_decoder.py`): the gateway refuses what this would dead-letter.

Decoding never produces more than `MAX_CHUNK_SIZE + 1` bytes, whatever the stream claims, so
a decompression bomb is refused after 8 MiB of output (16 MiB of memory at the peak: zlib
builds its output in blocks and then copies them into one bytes object).
"""

from __future__ import annotations

from dataclasses import dataclass

from workers.common.chunk_decoder import decode_chunk
from workers.common.chunk_uploads import MAX_CHUNK_SIZE, ChunkHeaders


@dataclass(frozen=True)
class VerifiedChunk:
    organization_id: int
    checksum: str
    data: bytes
    uploaded_at_ms: int
    # Size of the Kafka message value (compressed or not), for metrics.
    wire_size: int


def verify_chunk(headers: ChunkHeaders, value: bytes, limit: int = MAX_CHUNK_SIZE) -> VerifiedChunk:
    data = decode_chunk(headers.encoding, value, headers.checksum, limit)
    return VerifiedChunk(
        headers.organization_id, headers.checksum, data, headers.uploaded_at_ms, len(value)
    )

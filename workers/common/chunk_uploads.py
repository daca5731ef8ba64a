"""The chunk-upload contract between the gateway (producer) and blob-ingest (consumer): the
topic, the event's headers and the chunk size limit.

The chunk-upload event is one Kafka message per chunk on `chunk-uploads`:

- value: the chunk's bytes as the client sent them: raw, gzip- or zstd-compressed
  (`workers/common/chunk_decoder.py` decodes them, for the gateway and blob-ingest alike);
- key: the claimed sha1 (so one chunk always lands on the same partition);
- headers (all ASCII):
  - `organization-id`: decimal id of the owning organization;
  - `sha1`: the claimed sha1 of the *decompressed* bytes, 40 lowercase hex characters;
  - `content-encoding`: `identity`, `gzip` or `zstd`;
  - `uploaded-at`: when the chunk was accepted, milliseconds since the Unix epoch.

Chunks are at most 8 MiB (8388608 bytes) decompressed, and their value at most
`MAX_CHUNK_VALUE_BYTES` as sent: topic and producers allow 16 MiB messages, so a compressed
chunk that grew slightly still fits, with room left for its key and headers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

CHUNK_UPLOADS_TOPIC: Final = "chunk-uploads"
MAX_CHUNK_SIZE: Final = 8 * 1024 * 1024
#: The largest chunk value as sent (compressed or not): a Kafka message of the topic's
#: 16 MiB (`kafka_config.MAX_MESSAGE_BYTES`) minus 64 KiB for key, headers and framing.
MAX_CHUNK_VALUE_BYTES: Final = 16 * 1024 * 1024 - 64 * 1024

ORGANIZATION_HEADER: Final = "organization-id"
CHECKSUM_HEADER: Final = "sha1"
ENCODING_HEADER: Final = "content-encoding"
UPLOADED_AT_HEADER: Final = "uploaded-at"

Encoding = Literal["identity", "gzip", "zstd"]
_CHECKSUM = re.compile(rb"[0-9a-f]{40}")
_MAX_ORGANIZATION_ID = 2**63 - 1


class ChunkEventError(ValueError):
    """Bad input: `code` is a fixed identifier (DLQ reason and metric label)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}"


@dataclass(frozen=True)
class ChunkHeaders:
    organization_id: int
    checksum: str
    encoding: Encoding
    uploaded_at_ms: int


def encode_headers(
    organization_id: int, checksum: str, encoding: Encoding, uploaded_at_ms: int
) -> list[tuple[str, bytes]]:
    return [
        (ORGANIZATION_HEADER, str(organization_id).encode()),
        (CHECKSUM_HEADER, checksum.encode()),
        (ENCODING_HEADER, encoding.encode()),
        (UPLOADED_AT_HEADER, str(uploaded_at_ms).encode()),
    ]


def _single(
    headers: Sequence[tuple[str, bytes | None]], by_name: dict[str, bytes | None], name: str
) -> bytes:
    value = by_name.get(name)
    if value is not None and len(by_name) == len(headers):
        return value  # present, and no name is repeated
    values = [value for key, value in headers if key == name]
    if not values or values[0] is None:
        raise ChunkEventError("missing_header", f"header {name!r} is missing")
    if len(values) > 1:
        raise ChunkEventError("invalid_header", f"header {name!r} appears {len(values)} times")
    return values[0]


def _decimal(raw: bytes, name: str, maximum: int) -> int:
    if not raw.isdigit() or len(raw) > 19:
        raise ChunkEventError("invalid_header", f"header {name!r} must be a decimal integer")
    value = int(raw)
    if value > maximum:
        raise ChunkEventError("invalid_header", f"header {name!r} is out of range")
    return value


def parse_headers(headers: Sequence[tuple[str, bytes | None]]) -> ChunkHeaders:
    by_name = dict(headers)
    organization_id = _decimal(
        _single(headers, by_name, ORGANIZATION_HEADER), ORGANIZATION_HEADER, _MAX_ORGANIZATION_ID
    )
    if organization_id == 0:
        raise ChunkEventError("invalid_header", f"header {ORGANIZATION_HEADER!r} must be > 0")
    checksum = _single(headers, by_name, CHECKSUM_HEADER)
    if _CHECKSUM.fullmatch(checksum) is None:
        raise ChunkEventError(
            "invalid_checksum", "claimed sha1 must be 40 lowercase hexadecimal characters"
        )
    encoding = _single(headers, by_name, ENCODING_HEADER)
    if encoding == b"identity":
        parsed_encoding: Encoding = "identity"
    elif encoding == b"gzip":
        parsed_encoding = "gzip"
    elif encoding == b"zstd":
        parsed_encoding = "zstd"
    else:
        raise ChunkEventError("unknown_encoding", "content-encoding must be identity, gzip or zstd")
    uploaded_at = _decimal(
        _single(headers, by_name, UPLOADED_AT_HEADER), UPLOADED_AT_HEADER, _MAX_ORGANIZATION_ID
    )
    return ChunkHeaders(organization_id, checksum.decode(), parsed_encoding, uploaded_at)

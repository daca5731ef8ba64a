"""The gateway's limits and the options document of `GET .../chunk-upload/`
(docs/reference.md, Upload options)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from workers.common.chunk_uploads import MAX_CHUNK_SIZE

#: Decompressed bytes per chunk (a power of two: sentry-cli 2.39.1 and older need one).
CHUNK_SIZE: Final = MAX_CHUNK_SIZE
CHUNKS_PER_REQUEST: Final = 64
MAX_FILE_SIZE: Final = 2**31
MAX_REQUEST_SIZE: Final = 32 * 1024 * 1024
CONCURRENCY: Final = 8
HASH_ALGORITHM: Final = "sha1"
COMPRESSION: Final = ("gzip",)
ACCEPT: Final = (
    "debug_files",
    "release_files",
    "pdbs",
    "sources",
    "bcsymbolmaps",
    "il2cpp",
    "portablepdbs",
    "artifact_bundles",
    "artifact_bundles_v2",
    "proguard",
)


@dataclass(frozen=True)
class UploadLimits:
    """Strict `>` limits on decompressed sizes: exactly the limit passes."""

    chunk_size: int = CHUNK_SIZE
    chunks_per_request: int = CHUNKS_PER_REQUEST
    max_request_size: int = MAX_REQUEST_SIZE

    @property
    def max_body_bytes(self) -> int:
        """Raw body bytes accepted: the request limit plus room for multipart framing and for
        gzip's overhead on incompressible data (about 5 bytes per 32 KiB block)."""
        return self.max_request_size + self.max_request_size // 64 + 64 * 1024


def upload_path(organization_slug: str) -> str:
    return f"organizations/{organization_slug}/chunk-upload/"


def upload_url(organization_slug: str, public_url: str | None) -> str:
    """Absolute when the gateway knows its public URL, else relative to `/api/0/`."""
    if public_url is None:
        return upload_path(organization_slug)
    return f"{public_url}/api/0/{upload_path(organization_slug)}"


def chunk_upload_options(
    organization_slug: str, public_url: str | None, limits: UploadLimits
) -> dict[str, Any]:
    return {
        "url": upload_url(organization_slug, public_url),
        "chunkSize": limits.chunk_size,
        "chunksPerRequest": limits.chunks_per_request,
        "maxFileSize": MAX_FILE_SIZE,
        "maxRequestSize": limits.max_request_size,
        "concurrency": CONCURRENCY,
        "hashAlgorithm": HASH_ALGORITHM,
        "compression": list(COMPRESSION),
        "accept": list(ACCEPT),
    }

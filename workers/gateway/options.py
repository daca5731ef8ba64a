"""The gateway's limits and the options document of `GET .../chunk-upload/`
(docs/reference.md, Upload options)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from workers.common.chunk_uploads import MAX_CHUNK_SIZE

#: Decompressed bytes per chunk (a power of two: sentry-cli 2.39.1 and older need one).
CHUNK_SIZE: Final = MAX_CHUNK_SIZE
CHUNKS_PER_REQUEST: Final = 64
#: 4 GiB: the largest file Sentry assembles (offsets of its blob index are 32-bit).
MAX_FILE_SIZE: Final = 2**32
MAX_REQUEST_SIZE: Final = 32 * 1024 * 1024
CONCURRENCY: Final = 8
HASH_ALGORITHM: Final = "sha1"
#: The codecs a client may send chunks in (`Content-Encoding` of the POST), Sentry's order.
COMPRESSION: Final = ("gzip", "zstd")
#: What the assemble side takes, Sentry's list in Sentry's order. sentry-cli 2.x and older
#: look features up here; 3.x ignores the list, so nothing is ever removed from it.
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
    "preprod_artifacts",
    "dartsymbolmap",
)
#: sentry-cli resolves a relative upload `url` from 1.70.1 on. From 2.30.0 on, Sentry sends
#: it the absolute url again (for its region domains); the gateway answers the same way.
RELATIVE_URL_SINCE: Final = (1, 70, 1)
RELATIVE_URL_BEFORE: Final = (2, 30, 0)

# Sentry's pattern: the User-Agent starts with `sentry-cli/MAJOR.MINOR.PATCH`.
_SENTRY_CLI = re.compile(r"sentry-cli/(\d+)\.(\d+)\.(\d+)")
_MAX_VERSION_DIGITS: Final = 9

SentryCliVersion = tuple[int, int, int]


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


@dataclass(frozen=True)
class UploadUrls:
    """Where clients are told to upload: the gateway's settings that shape `url`.

    `public_url` is the base clients reach the gateway by (`GATEWAY_PUBLIC_URL`);
    `upload_url_prefix` (`GATEWAY_UPLOAD_URL_PREFIX`) sends every client elsewhere. Both
    are absolute http(s) URLs without a trailing slash, or None.
    """

    public_url: str | None = None
    upload_url_prefix: str | None = None


def sentry_cli_version(user_agent: str | None) -> SentryCliVersion | None:
    """The version of a `sentry-cli/X.Y.Z ...` User-Agent; None for any other client."""
    match = _SENTRY_CLI.match(user_agent or "")
    if match is None or any(len(part) > _MAX_VERSION_DIGITS for part in match.groups()):
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def upload_path(organization_slug: str) -> str:
    return f"organizations/{organization_slug}/chunk-upload/"


def upload_url(organization_slug: str, urls: UploadUrls, user_agent: str | None = None) -> str:
    """The upload `url` for one client, as Sentry chooses it (docs/reference.md, Upload
    options): the upload-url prefix when configured, whoever asks; else relative to
    `/api/0/` for sentry-cli 1.70.1 up to 2.30.0 (excluded); else absolute on the public
    URL. Without a public URL every client gets the relative url."""
    path = upload_path(organization_slug)
    if urls.upload_url_prefix is not None:
        return f"{urls.upload_url_prefix}/api/0/{path}"
    version = sentry_cli_version(user_agent)
    relative_capable = version is not None and RELATIVE_URL_SINCE <= version < RELATIVE_URL_BEFORE
    if urls.public_url is None or relative_capable:
        return path
    return f"{urls.public_url}/api/0/{path}"


def chunk_upload_options(
    organization_slug: str,
    limits: UploadLimits,
    *,
    urls: UploadUrls | None = None,
    user_agent: str | None = None,
    compression: tuple[str, ...] = COMPRESSION,
) -> dict[str, Any]:
    """The options document for one request. `compression` is what the gateway advertises
    (`GATEWAY_UPLOAD_COMPRESSION`, in Sentry's order); it never widens `COMPRESSION`."""
    return {
        "url": upload_url(organization_slug, urls or UploadUrls(), user_agent),
        "chunkSize": limits.chunk_size,
        "chunksPerRequest": limits.chunks_per_request,
        "maxFileSize": MAX_FILE_SIZE,
        "maxRequestSize": limits.max_request_size,
        "concurrency": CONCURRENCY,
        "hashAlgorithm": HASH_ALGORITHM,
        "compression": [codec for codec in COMPRESSION if codec in compression],
        "accept": list(ACCEPT),
    }

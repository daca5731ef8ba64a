"""Choosing and opening a blob storage backend from a URL.

- `file:///absolute/path` → `FilesystemBlobStorage` (the local default is
  `default_storage_url(state_dir)`, i.e. `<state_dir>/blobs`);
- `s3://bucket` or `s3://bucket/key/prefix` → `S3BlobStorage`; the endpoint, region,
  credentials and addressing style come from `S3Options`, never from the URL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import SplitResult, unquote, urlsplit

from workers.common.settings import redact_url
from workers.common.storage.base import BlobStorage, InvalidBlobPath
from workers.common.storage.filesystem import FilesystemBlobStorage
from workers.common.storage.filesystem_sync import SyncSetting
from workers.common.storage.s3 import (
    S3BlobStorage,
    S3Options,
    normalize_key_prefix,
    validate_bucket_name,
)

SCHEMES = ("file", "s3")


class StorageUrlError(ValueError):
    """A blob storage URL that cannot be used; the message names the (redacted) URL."""


@dataclass(frozen=True, slots=True)
class FileLocation:
    root: Path


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    #: Key prefix, empty or ending with `/`.
    prefix: str


def default_storage_url(state_dir: Path) -> str:
    """`file:///.../<state_dir>/blobs`: where the local stack keeps blobs."""
    return (state_dir.absolute() / "blobs").as_uri()


def parse_storage_url(url: str) -> FileLocation | S3Location:
    """Parse a blob storage URL; `StorageUrlError` (a `ValueError`) when it is unusable."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
    except ValueError as error:
        raise StorageUrlError(f"malformed blob storage URL {shown!r}: {error}") from None
    if parts.scheme not in SCHEMES:
        scheme = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise StorageUrlError(
            f"blob storage URL {shown!r} has {scheme}; expected one of "
            + ", ".join(f"{scheme}://" for scheme in SCHEMES)
        )
    if parts.query or parts.fragment:
        raise StorageUrlError(f"blob storage URL {shown!r} must not have a query or fragment")
    if parts.scheme == "file":
        return _file_location(parts, shown)
    return _s3_location(parts, shown)


def open_storage(
    url: str, *, s3_options: S3Options | None = None, sync: SyncSetting = "auto"
) -> BlobStorage:
    """The backend for `url`, opened (the caller closes it). `s3_options` is for `s3://`,
    `sync` for `file://`."""
    location = parse_storage_url(url)
    if isinstance(location, FileLocation):
        return FilesystemBlobStorage(location.root, sync=sync)
    return S3BlobStorage(location.bucket, prefix=location.prefix, options=s3_options)


def _file_location(parts: SplitResult, shown: str) -> FileLocation:
    if parts.netloc not in ("", "localhost"):
        raise StorageUrlError(
            f"blob storage URL {shown!r}: a file URL has no host; use file:///absolute/path"
        )
    path = unquote(parts.path)
    if not path.startswith("/"):
        raise StorageUrlError(
            f"blob storage URL {shown!r}: the path must be absolute (file:///absolute/path)"
        )
    if ".." in PurePosixPath(path).parts:
        raise StorageUrlError(f"blob storage URL {shown!r}: the path must not contain '..'")
    if "\x00" in path:
        raise StorageUrlError(f"blob storage URL {shown!r}: the path contains a NUL byte")
    return FileLocation(root=Path(path))


def _s3_location(parts: SplitResult, shown: str) -> S3Location:
    if "@" in parts.netloc:
        raise StorageUrlError(
            f"blob storage URL {shown!r}: credentials do not belong in the URL; "
            "pass the access key and secret key as S3 options"
        )
    if ":" in parts.netloc:
        raise StorageUrlError(
            f"blob storage URL {shown!r}: s3://bucket has no port; "
            "pass a server's address as the S3 endpoint URL"
        )
    try:
        bucket = validate_bucket_name(parts.netloc)
    except ValueError as error:
        raise StorageUrlError(f"blob storage URL {shown!r}: {error}") from None
    try:
        prefix = normalize_key_prefix(unquote(parts.path).removeprefix("/"))
    except InvalidBlobPath as error:
        raise StorageUrlError(f"blob storage URL {shown!r}: bad key prefix: {error}") from None
    return S3Location(bucket=bucket, prefix=prefix)

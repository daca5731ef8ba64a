"""Artifact bundles: the zip `sentry-cli sourcemaps upload` sends, its manifest and index
(docs/debug-files-and-bundles.md, Artifact bundles). Only the zip's directory and
`manifest.json` are read, within `BundleLimits`, from a path or from a seekable binary file
(the worker's `ChunkedFile`, which reads the bundle where its chunks are stored); the
refusals and their details are listed in the docs, each with the upstream file it comes
from."""

from __future__ import annotations

import lzma
import struct
import uuid
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import orjson
from symbolic.debuginfo import normalize_debug_id
from symbolic.exceptions import SymbolicError

from workers.assemble.contents import BadArtifactBundle, BundleArtifact, BundleContents

#: Upstream's answer for a bundle it cannot open or whose manifest it cannot read.
INVALID_BUNDLE: Final = "the bundle is invalid"
#: Upstream's answer for a bundle with no indexed debug id when the request names no release
#: (the worker knows the request's release; this reader does not).
NO_DEBUG_IDS_OR_RELEASE: Final = "uploading a bundle without debug ids or release is prohibited"
MANIFEST: Final = "manifest.json"
#: Upstream's SourceFileType, lowercased: the file types whose debug ids are indexed.
INDEXED_FILE_TYPES: Final = frozenset(
    {"source", "minified_source", "source_map", "indexed_ram_bundle"}
)
#: The index's `file_type` column.
MAX_FILE_TYPE_LENGTH: Final = 32

_ZIP_ERRORS: Final = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    ValueError,
    NotImplementedError,  # a compression method zipfile lacks
    RuntimeError,  # an encrypted entry
)
# The zip's end records (APPNOTE.TXT 4.3.14-16): read before zipfile loads the whole directory.
_END_OF_DIRECTORY: Final = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR: Final = struct.Struct("<4sLQL")
_ZIP64_END_OF_DIRECTORY: Final = struct.Struct("<4sQ2H2L4Q")
_MAX_COMMENT: Final = 0xFFFF


@dataclass(frozen=True)
class BundleLimits:
    """What a bundle may make this reader hold in memory (a zip bomb is refused first)."""

    max_entries: int = 100_000
    #: The zip's directory: the list of its entries and their names.
    max_directory_bytes: int = 64 * 1024 * 1024
    max_manifest_bytes: int = 32 * 1024 * 1024


DEFAULT_LIMITS: Final = BundleLimits()


class SeekableBinary(Protocol):
    """A binary file open for reading that can seek (what zipfile reads)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def tell(self) -> int: ...


def read_artifact_bundle(
    bundle: Path | SeekableBinary, limits: BundleLimits = DEFAULT_LIMITS
) -> BundleContents:
    """The manifest's contents of the bundle at a path, or in a binary file (read from its
    start, left open); raises `BadArtifactBundle`."""
    if isinstance(bundle, Path):
        with bundle.open("rb") as stream:
            return _read_bundle(stream, limits)
    return _read_bundle(bundle, limits)


def _read_bundle(stream: SeekableBinary, limits: BundleLimits) -> BundleContents:
    _check_directory(stream, limits)
    try:
        with zipfile.ZipFile(stream) as archive:
            sizes = {info.filename: info.file_size for info in archive.infolist()}
            manifest_bytes = _read_manifest(archive, limits.max_manifest_bytes)
    except _ZIP_ERRORS as error:
        raise BadArtifactBundle(INVALID_BUNDLE, reason=f"not a readable zip: {error}") from error
    return _contents(_parse_manifest(manifest_bytes), sizes)


def bundle_id_for_checksum(checksum: str) -> uuid.UUID:
    """Upstream's bundle id for a bundle whose manifest has no `debug_id`: from its sha1."""
    return uuid.UUID(normalize_debug_id(checksum)[:36])


def _refuse(reason: str) -> BadArtifactBundle:
    """A refusal upstream does not make (it accepts, or fails later): a detail of our own."""
    return BadArtifactBundle(f"{INVALID_BUNDLE}: {reason}")


def _invalid(reason: str) -> BadArtifactBundle:
    """A refusal upstream makes too, with its one detail."""
    return BadArtifactBundle(INVALID_BUNDLE, reason=reason)


def _check_directory(stream: SeekableBinary, limits: BundleLimits) -> None:
    entries, directory_bytes = _directory_size(stream)
    if entries > limits.max_entries:
        raise _refuse(f"more than {limits.max_entries} entries in the zip")
    if directory_bytes > limits.max_directory_bytes:
        raise _refuse(f"the zip's directory is larger than {limits.max_directory_bytes} bytes")


def _directory_size(stream: SeekableBinary) -> tuple[int, int]:
    """(entries, bytes) of the zip's central directory, from its end records."""
    file_size = stream.seek(0, 2)
    tail_start = max(0, file_size - _END_OF_DIRECTORY.size - _MAX_COMMENT)
    stream.seek(tail_start)
    tail = stream.read(file_size - tail_start)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + _END_OF_DIRECTORY.size > len(tail):
        raise _invalid("not a zip: no end of central directory record")
    *_, entries, directory_bytes, _, _ = _END_OF_DIRECTORY.unpack_from(tail, at)
    if entries != 0xFFFF and directory_bytes != 0xFFFFFFFF:
        return entries, directory_bytes
    locator_at = at - _ZIP64_LOCATOR.size
    if locator_at < 0 or tail[locator_at : locator_at + 4] != b"PK\x06\x07":
        raise _invalid("not a zip: no zip64 end of central directory locator")
    _, _, record_offset, _ = _ZIP64_LOCATOR.unpack_from(tail, locator_at)
    stream.seek(record_offset)
    record = stream.read(_ZIP64_END_OF_DIRECTORY.size)
    if len(record) < _ZIP64_END_OF_DIRECTORY.size or record[:4] != b"PK\x06\x06":
        raise _invalid("not a zip: no zip64 end of central directory record")
    fields = _ZIP64_END_OF_DIRECTORY.unpack(record)
    return fields[7], fields[8]


def _read_manifest(archive: zipfile.ZipFile, max_bytes: int) -> bytes:
    try:
        info = archive.getinfo(MANIFEST)
    except KeyError:
        raise _invalid(f"no {MANIFEST} in the zip") from None
    if info.file_size > max_bytes:
        raise _refuse(f"{MANIFEST} is larger than {max_bytes} bytes")
    with archive.open(info) as stream:
        return stream.read(max_bytes + 1)


def _parse_manifest(manifest_bytes: bytes) -> Mapping[str, object]:
    try:
        manifest = orjson.loads(manifest_bytes)
    except orjson.JSONDecodeError as error:
        raise _invalid(f"{MANIFEST} is not JSON: {error}") from error
    if not isinstance(manifest, dict):
        raise _invalid(f"{MANIFEST} is not an object")
    return manifest


def _contents(manifest: Mapping[str, object], sizes: Mapping[str, int]) -> BundleContents:
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        raise _invalid(f"{MANIFEST}: files is not a mapping")
    artifacts = []
    debug_ids = set()
    for file_path, entry in files.items():
        if not isinstance(entry, dict):
            raise _invalid(f"{MANIFEST}: the entry of {file_path} is not an object")
        if file_path not in sizes:
            raise _refuse(f"{file_path} is in {MANIFEST} but not in the zip")
        artifact = _artifact(file_path, entry, sizes[file_path])
        if artifact is None:
            continue
        artifacts.append(artifact)
        if artifact.debug_id is not None and artifact.file_type in INDEXED_FILE_TYPES:
            debug_ids.add((artifact.debug_id, artifact.file_type))
    bundle_debug_id = manifest.get("debug_id")
    return BundleContents(
        bundle_id=None if bundle_debug_id is None else _debug_id(bundle_debug_id, MANIFEST),
        artifacts=tuple(artifacts),
        debug_ids=frozenset(debug_ids),
        release=_optional_text(manifest, "release"),
        dist=_optional_text(manifest, "dist"),
    )


def _artifact(file_path: str, entry: Mapping[str, object], size: int) -> BundleArtifact | None:
    """The entry's index row; None for an entry without a url, which upstream skips."""
    url = entry.get("url")
    if url is not None and not isinstance(url, str):
        raise _refuse(f"the url of {file_path} is not a string")
    if not url:
        return None
    file_type = entry.get("type", "")
    if not isinstance(file_type, str) or len(file_type) > MAX_FILE_TYPE_LENGTH:
        raise _refuse(
            f"the type of {file_path} is not a string of at most {MAX_FILE_TYPE_LENGTH} characters"
        )
    headers = entry.get("headers", {})
    if not isinstance(headers, dict):
        raise _invalid(f"the headers of {file_path} are not a mapping")
    # Header names are case-insensitive: upstream lowercases them.
    raw_debug_id = {str(key).lower(): value for key, value in headers.items()}.get("debug-id")
    debug_id = None if raw_debug_id is None else _debug_id(raw_debug_id, file_path)
    return BundleArtifact(file_path, url, file_type, debug_id, size)


def _debug_id(value: object, where: str) -> uuid.UUID:
    if not isinstance(value, str):
        raise _invalid(f"the debug id of {where} is not a string")
    try:
        # symbolic's normal form may carry an appendix (`-1a`) after the 36 UUID characters.
        return uuid.UUID(normalize_debug_id(value)[:36])
    except SymbolicError:
        raise _refuse(f"invalid debug id {value[:80]!r} in {where}") from None


def _optional_text(manifest: Mapping[str, object], key: str) -> str | None:
    value = manifest.get(key)
    if value is not None and not isinstance(value, str):
        raise _refuse(f"{MANIFEST}: {key} is not a string")
    return value or None

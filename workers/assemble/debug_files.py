"""Debug information files, detected with symbolic as upstream's `detect_dif_from_path` does
(docs/debug-files-and-bundles.md, Debug information files). The refusals and their details
are listed there, each with the upstream file it comes from."""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Final

from symbolic.debuginfo import Archive, Object
from symbolic.exceptions import ObjectErrorUnsupportedObject, SymbolicError

from workers.assemble.contents import BadDebugFile, DebugObject

NIL_DEBUG_ID: Final = "00000000-0000-0000-0000-000000000000"
#: What `sentry-cli difutil check` says of a file without one.
MISSING_DEBUG_ID: Final = "missing debug identifier, likely stripped"


def detect_debug_files(path: Path, name: str) -> list[DebugObject]:
    """The objects of the file at `path` (uploaded as `name`); raises `BadDebugFile`."""
    archive = _open_archive(path)
    try:
        # symbolic parses an object when it is asked for it, so a truncated or corrupt file
        # that opened fine fails here.
        objects = [_debug_object(found, name) for found in archive.iter_objects()]
    except SymbolicError as error:
        raise BadDebugFile(f"Invalid debug information file: {error}") from error
    if not objects:
        raise BadDebugFile(architectures_detail(0))
    for found in objects:
        if not found.debug_id or found.debug_id.startswith(NIL_DEBUG_ID):
            raise BadDebugFile(
                f"Invalid debug information file: {MISSING_DEBUG_ID}",
                reason=f"{found.cpu_name} object without a debug id",
            )
    return objects


def architectures_detail(count: int) -> str:
    """Upstream's assemble answer for a file that does not hold exactly one object."""
    return f"Object contains {count} architectures (1 expected)"


def _open_archive(path: Path) -> Archive:
    try:
        return Archive.open(str(path))
    except ObjectErrorUnsupportedObject as error:
        raise BadDebugFile(f"Unsupported debug information file: {error}") from error
    except SymbolicError as error:
        raise BadDebugFile(f"Invalid debug information file: {error}") from error


def _debug_object(found: Object, name: str) -> DebugObject:
    file_format = found.file_format
    return DebugObject(
        debug_id=found.debug_id,
        code_id=found.code_id,
        cpu_name=found.arch,
        object_name=_object_name(name, file_format),
        file_format=file_format,
        object_kind=found.kind,
        features=tuple(sorted(found.features)),
    )


def _object_name(name: str, file_format: str) -> str:
    """Upstream's `object_name`: the upload's base name, without `.sym` for Breakpad."""
    basename = posixpath.basename(name)
    if file_format == "breakpad":
        return basename.removesuffix(".sym")
    return basename

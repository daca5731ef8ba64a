"""What each stage of one assemble hands to the next, and the error details a file can end
with (upstream's words: `src/sentry/tasks/assemble.py`, docs/assemble.md, States)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from workers.assemble.chunked_file import StoredChunk
from workers.assemble.contents import BundleContents, DebugObject

#: A chunk of the file is not (or no longer) a stored blob of the organization.
NOT_ALL_CHUNKS: Final = "Not all chunks available for assembling"
#: The chunks add up to more than `--max-assemble-bytes`.
TOO_LARGE: Final = "File exceeds maximum size"
#: The chunks make a file whose sha1 is not the one the client claimed.
CHECKSUM_MISMATCH: Final = "Reported checksum mismatch"
#: Reading the file's contents failed unexpectedly, or the task was started too many times.
INTERNAL_ERROR: Final = "internal server error"


@dataclass(frozen=True)
class Refused:
    """The file ends in `error` with this detail."""

    detail: str


@dataclass(frozen=True)
class AssembledBytes:
    """The whole file, read and checked: `size` bytes whose sha1 is the one claimed, made of
    `chunks` in order (each the size it was read at). `path` is the scratch file it was
    written to (a debug file: symbolic reads a path; removed once the file is recorded), or
    None when it was not written (an artifact bundle is read through its chunks)."""

    size: int
    chunks: tuple[StoredChunk, ...]
    path: Path | None = None


@dataclass(frozen=True)
class DebugFileContents:
    objects: tuple[DebugObject, ...]


FileContents = DebugFileContents | BundleContents

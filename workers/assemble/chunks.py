"""Reading a file's chunks back from blob storage, in order, hashing the whole file as it
streams (upstream's `assemble_file`, `src/sentry/tasks/assemble.py`). A debug file is also
written to a scratch file (symbolic reads a path); an artifact bundle is not written at all:
it is later opened through its chunks (`chunked_file.ChunkedFile`), as upstream opens an
assembled `File`.

Before anything is read, every chunk must be a blob the organization owns (else
`Not all chunks available for assembling`) and their sizes must add up to at most
`max_bytes` (else `File exceeds maximum size`). A blob whose object is gone from storage
ends the same way as a missing chunk; a whole-file sha1 other than the claimed one ends in
`Reported checksum mismatch`. Other storage failures are raised: the worker stops and the
task, still `assembling`, is done again by the next one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Final

from psycopg_pool import ConnectionPool

from workers.assemble.chunked_file import StoredChunk
from workers.assemble.outcomes import (
    CHECKSUM_MISMATCH,
    NOT_ALL_CHUNKS,
    TOO_LARGE,
    AssembledBytes,
    Refused,
)
from workers.assemble.scratch import ScratchDirectory, ScratchWriter
from workers.assemble.tasks import AssembleTask
from workers.common.assemble_requests import AssembleKind
from workers.common.storage import BlobNotFoundError, BlobStorage

GIB: Final = 1024**3
#: The largest file assembled (the gateway's per-request verify bound).
DEFAULT_MAX_ASSEMBLE_BYTES: Final = 8 * GIB
#: The kind of file written to a scratch file: symbolic's readers take a path.
WRITTEN_KIND: Final[AssembleKind] = "dif"


class ChunkLocator:
    """Where the organization's blobs of some checksums are stored (`blobs`, `blob_owners`)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.__pool = pool

    def __call__(self, organization_id: int, checksums: Sequence[str]) -> dict[str, StoredChunk]:
        with self.__pool.connection() as connection:
            rows = connection.execute(
                "SELECT b.checksum, b.path, b.size "
                "FROM blobs b JOIN blob_owners o ON o.blob_id = b.id "
                "WHERE o.organization_id = %s AND b.checksum = ANY(%s)",
                (organization_id, sorted(set(checksums))),
            ).fetchall()
        return {
            str(checksum).strip(): StoredChunk(path, int(size)) for checksum, path, size in rows
        }


class ChunkAssembler:
    """A task's chunks → `AssembledBytes` (a debug file's in a scratch file), or `Refused`."""

    def __init__(
        self,
        locate: Callable[[int, Sequence[str]], dict[str, StoredChunk]],
        storage: BlobStorage,
        scratch: ScratchDirectory,
        max_bytes: int = DEFAULT_MAX_ASSEMBLE_BYTES,
        on_read: Callable[[int], None] = lambda size: None,
    ) -> None:
        self.__locate = locate
        self.__storage = storage
        self.__scratch = scratch
        self.__max_bytes = max_bytes
        self.__on_read = on_read

    def __call__(self, task: AssembleTask) -> AssembledBytes | Refused:
        stored = self.__locate(task.organization_id, task.chunks)
        if any(checksum not in stored for checksum in task.chunks):
            return Refused(NOT_ALL_CHUNKS)
        chunks = [stored[checksum] for checksum in task.chunks]
        if sum(chunk.size for chunk in chunks) > self.__max_bytes:
            return Refused(TOO_LARGE)
        if task.kind != WRITTEN_KIND:
            return self.__read(task, chunks, lambda data: None)
        path = self.__scratch.new_path()
        try:
            with ScratchWriter(path) as scratch_file:
                outcome = self.__read(task, chunks, scratch_file.write)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if isinstance(outcome, Refused):
            path.unlink(missing_ok=True)
            return outcome
        return AssembledBytes(outcome.size, outcome.chunks, path)

    def __read(
        self, task: AssembleTask, chunks: Sequence[StoredChunk], write: Callable[[bytes], None]
    ) -> AssembledBytes | Refused:
        """Reads and hashes `chunks` in order, handing each to `write` before hashing it."""
        hasher = hashlib.sha1(usedforsecurity=False)
        size = 0
        read: list[StoredChunk] = []
        for chunk in chunks:
            try:
                data = self.__storage.get(chunk.path)
            except BlobNotFoundError:
                return Refused(NOT_ALL_CHUNKS)
            size += len(data)
            if size > self.__max_bytes:
                return Refused(TOO_LARGE)
            write(data)
            hasher.update(data)
            self.__on_read(len(data))
            # The size read, not the row's: the file is later read through these chunks.
            read.append(StoredChunk(chunk.path, len(data)))
        if hasher.hexdigest() != task.checksum:
            return Refused(CHECKSUM_MISMATCH)
        return AssembledBytes(size, tuple(read))

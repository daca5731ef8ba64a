"""Reading a file's chunks back from blob storage, in order, into one temporary file, hashing
the whole file as it streams (upstream's `assemble_file`, `src/sentry/tasks/assemble.py`).

Before anything is read, every chunk must be a blob the organization owns (else
`Not all chunks available for assembling`) and their sizes must add up to at most
`max_bytes` (else `File exceeds maximum size`). A blob whose object is gone from storage
ends the same way as a missing chunk; a whole-file sha1 other than the claimed one ends in
`Reported checksum mismatch`. Other storage failures are raised: the worker stops and the
task, still `assembling`, is done again by the next one.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from psycopg_pool import ConnectionPool

from workers.assemble.outcomes import (
    CHECKSUM_MISMATCH,
    NOT_ALL_CHUNKS,
    TOO_LARGE,
    AssembledBytes,
    Refused,
)
from workers.assemble.scratch import ScratchDirectory
from workers.assemble.tasks import AssembleTask
from workers.common.storage import BlobNotFoundError, BlobStorage

GIB: Final = 1024**3
#: The largest file assembled (the gateway's per-request verify bound).
DEFAULT_MAX_ASSEMBLE_BYTES: Final = 8 * GIB
#: Chunks handed to the writing thread and not yet written: at most this many plus the one
#: being read are in memory (8 MiB each).
WRITES_IN_FLIGHT: Final = 2


@dataclass(frozen=True)
class StoredChunk:
    path: str
    size: int


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
    """A task's chunks → `AssembledBytes` in a scratch file, or `Refused`."""

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
        if sum(stored[checksum].size for checksum in task.chunks) > self.__max_bytes:
            return Refused(TOO_LARGE)
        path = self.__scratch.new_path()
        try:
            outcome = self.__write(task, stored, path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if isinstance(outcome, Refused):
            path.unlink(missing_ok=True)
        return outcome

    def __write(
        self, task: AssembleTask, stored: dict[str, StoredChunk], path: Path
    ) -> AssembledBytes | Refused:
        hasher = hashlib.sha1(usedforsecurity=False)
        size = 0
        # The file is written in a thread of its own while the next chunks are read and
        # hashed (both release the GIL): writing then costs almost nothing next to reading.
        # The executor is left (every write done) before the file is closed.
        with (
            path.open("wb") as out,
            ThreadPoolExecutor(1, thread_name_prefix="assemble-write") as writer,
        ):
            writes: deque[Future[int]] = deque()
            for checksum in task.chunks:
                try:
                    data = self.__storage.get(stored[checksum].path)
                except BlobNotFoundError:
                    return Refused(NOT_ALL_CHUNKS)
                size += len(data)
                if size > self.__max_bytes:
                    return Refused(TOO_LARGE)
                writes.append(writer.submit(out.write, data))
                hasher.update(data)
                self.__on_read(len(data))
                while len(writes) > WRITES_IN_FLIGHT:
                    writes.popleft().result()
            for write in writes:
                write.result()
        if hasher.hexdigest() != task.checksum:
            return Refused(CHECKSUM_MISMATCH)
        return AssembledBytes(path, size)

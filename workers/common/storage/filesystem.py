"""Blob storage in a local (or mounted) directory.

A key `ab/cdef/0123...` is the file `<root>/ab/cdef/0123...`. `put_many` makes a batch
durable with as few syncs as correctness allows, in one of two ways (`sync`,
`filesystem_sync.py`):

- `filesystem` (where `syncfs` can be trusted, the default there): the batch's files are
  written by a small thread pool, then one `syncfs` makes every file and directory entry of
  the batch durable at once;
- `file`: each file is `fsync`ed by the pool thread that wrote it (`fsync` waits on the disk
  and releases the GIL, so the batch pays for a few syncs in a row rather than one per
  object), then each distinct directory that gained an entry is `fsync`ed once per batch (on
  the calling thread, in parallel when there are many): the objects' directories, plus the
  parent of every directory this process has not yet seen durable (a directory made by this
  batch, or by another process, needs its own entry synced). Batches of fewer than
  `FILESYSTEM_SYNC_MIN_OBJECTS` are always synced this way.

`put_many` writes every object to a temporary file `.tmp-<uuid hex>` in its final directory,
syncs the contents, renames each over its final name (atomic: a reader sees the old object or
the whole new one, never a part) and then syncs the names. Objects of 256 KiB and more are
written with direct I/O (`synced_file.py`). Writers that put a batch's objects in one
directory (`random_blob_paths`) pay for one directory sync per batch instead of one per object.

`put_new_many` (objects at fresh keys that nothing reads before it returns) skips the
temporary file: each file is created at its final name and written by the pool, then the
batch is synced as above. The rename cost about a fifth of the throughput for 4 KiB objects
on the development VM (docs/benchmarks.md, Blob ingest). The pool runs one task per thread,
each taking the next object until none is left, not one future per object.

Temporary files never appear in `iter_objects` (names starting with `.` are not keys). A
failed batch removes its temporary files; a crash can leave some behind, which
`remove_temporary_files` deletes. Deletes are not synced: an object deleted just before a
power loss may come back, and the orphan sweep deletes it again. Empty directories are
kept (at most 256 + 65 536 for random paths) so that concurrent writers never race a
directory removal.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import threading
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from workers.common.storage.base import (
    BlobNotFoundError,
    BlobStorage,
    StorageError,
    StoredObject,
    is_blob_path,
)
from workers.common.storage.filesystem_sync import (
    SyncMethod,
    SyncSetting,
    SyncUnavailable,
    choose_sync_method,
    syncfs,
)
from workers.common.storage.filesystem_walk import (
    describe_os_error,
    key_of,
    walk_entries,
    walk_files,
)
from workers.common.storage.synced_file import write_new_file

logger = logging.getLogger(__name__)

#: Name prefix of the files `put_many` writes before renaming them.
TEMPORARY_PREFIX: Final = ".tmp-"
#: Threads that write and fsync a batch's files; fsync waits on the disk, not the CPU.
DEFAULT_SYNC_THREADS: Final = 8
#: Batches of fewer objects are synced per file even where `syncfs` is used: on the
#: development VM one object with its directory synced at 517 objects/s by `fsync` and 296 by
#: `syncfs`, four break even, sixteen gained 2 to 2.2 times (docs/benchmarks.md, Blob ingest).
FILESYSTEM_SYNC_MIN_OBJECTS: Final = 4
#: Directories synced on the calling thread rather than in the pool (see `_sync_directories`).
INLINE_DIRECTORY_SYNCS: Final = 4


class FilesystemBlobStorage(BlobStorage):
    """Objects as files under an absolute `root` directory (created if missing)."""

    def __init__(
        self, root: Path, sync_threads: int = DEFAULT_SYNC_THREADS, sync: SyncSetting = "auto"
    ) -> None:
        if not root.is_absolute():
            raise ValueError(f"blob storage root must be an absolute path, got {str(root)!r}")
        if sync_threads < 1:
            raise ValueError(f"sync_threads must be at least 1, got {sync_threads}")
        super().__init__()
        self._root = root
        self._threads = sync_threads
        self._sync_pool = ThreadPoolExecutor(sync_threads, thread_name_prefix="blob-sync")
        # Directories whose own entry in their parent is known to be on disk.
        self._durable_directories: set[Path] = set()
        self._lock = threading.Lock()
        self._create_root()
        try:
            self._sync_method: SyncMethod = choose_sync_method(root, sync)
        except (SyncUnavailable, OSError) as error:
            self._sync_pool.shutdown()
            detail = describe_os_error(error) if isinstance(error, OSError) else str(error)
            raise StorageError("open", None, f"{root}: syncfs cannot be used: {detail}") from error
        logger.info(
            "blob storage opened",
            extra={"backend": "file", "root": str(root), "sync": self._sync_method},
        )

    @property
    def sync_method(self) -> SyncMethod:
        """`file` (fsync per file and directory) or `filesystem` (one syncfs per batch)."""
        return self._sync_method

    @property
    def root(self) -> Path:
        return self._root

    def __repr__(self) -> str:
        return f"FilesystemBlobStorage({str(self._root)!r})"

    # -- BlobStorage ----------------------------------------------------------------------------

    def _do_put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        pending: list[tuple[Path, Path]] = []  # (temporary file, final name)
        renamed = 0
        current: str | None = items[0][0]
        try:
            with self._batch_descriptor(len(items)) as batch:
                directories, new_directories = self._prepare_directories(items)
                for path, _ in items:
                    final = self._root / path
                    # Recorded before the write so that a failed write is cleaned up too.
                    pending.append((final.parent / f"{TEMPORARY_PREFIX}{uuid.uuid4().hex}", final))
                # Every write has ended when this returns, so no file still being written can
                # escape the cleanup of temporary files.
                temporaries = [temporary for temporary, _ in pending]
                failures = self._in_pool(
                    [(file, data) for file, (_, data) in zip(temporaries, items, strict=True)],
                    [path for path, _ in items],
                    fsync=batch is None,
                )
                if failures:
                    current, error = failures[0]
                    raise error
                # The contents are durable before any name points at them.
                current = None
                if batch is not None:
                    syncfs(batch)
                for (temporary, final), (path, _) in zip(pending, items, strict=True):
                    current = path
                    os.replace(temporary, final)
                    renamed += 1
                failed_sync = self._sync_names(batch, directories)
                if failed_sync:
                    current, error = failed_sync
                    raise error
        except OSError as error:
            self._remove_quietly(temporary for temporary, _ in pending[renamed:])
            raise StorageError("put_many", current, describe_os_error(error)) from error
        self._mark_durable(new_directories, items, directories)

    def _do_put_new_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Each file created at its final name and written by the pool (one task per thread,
        each taking the next object), then synced: no temporary file, no rename."""
        current: str | None = items[0][0]
        root = str(self._root)
        finals = [f"{root}/{path}" for path, _ in items]  # no Path per object: 3 µs each
        failed: set[str] = set()
        try:
            with self._batch_descriptor(len(items)) as batch:
                directories, new_directories = self._prepare_directories(items)
                failures = self._in_pool(
                    [(final, data) for final, (_, data) in zip(finals, items, strict=True)],
                    [path for path, _ in items],
                    fsync=batch is None,
                )
                if failures:
                    failed = {key for key, _ in failures}
                    current, error = failures[0]
                    raise error
                failed_sync = self._sync_names(batch, directories)
                if failed_sync:
                    current, error = failed_sync
                    raise error
        except OSError as error:
            # A failed file was removed by its writer (or was never ours: it existed); the
            # batch's other objects go too.
            self._remove_quietly(
                final for final, (path, _) in zip(finals, items, strict=True) if path not in failed
            )
            raise StorageError("put_new_many", current, describe_os_error(error)) from error
        self._mark_durable(new_directories, items, directories)

    @contextlib.contextmanager
    def _batch_descriptor(self, objects: int) -> Iterator[int | None]:
        """The descriptor a batch of `objects` is synced through with `syncfs`, or None when
        each file is fsynced as it is written. The descriptor is opened before the batch's
        first write, so that the sync reports any of their writeback errors. Fewer than
        `FILESYSTEM_SYNC_MIN_OBJECTS` are synced per file: one `syncfs` costs more than an
        `fsync` or two."""
        if self._sync_method == "file" or objects < FILESYSTEM_SYNC_MIN_OBJECTS:
            yield None
            return
        descriptor = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            yield descriptor
        finally:
            os.close(descriptor)

    def _sync_names(
        self, descriptor: int | None, directories: set[Path]
    ) -> tuple[str | None, OSError] | None:
        """Make the batch's files and names durable: one `syncfs` through `descriptor`, or
        each of `directories` fsynced. The first failure, with its key (None when the whole
        filesystem's sync failed)."""
        if descriptor is None:
            return self._sync_directories(directories)
        try:
            syncfs(descriptor)
        except OSError as error:
            return None, error
        return None

    def _prepare_directories(
        self, items: Sequence[tuple[str, bytes]]
    ) -> tuple[set[Path], set[Path]]:
        """Create the batch's missing directories; returns the directories to fsync after
        the writes (each object's, and the parent of every directory not yet known durable)
        and those created, to be marked durable after the sync."""
        directories: set[Path] = set()
        created: set[Path] = set()
        for key in {path.rpartition("/")[0] for path, _ in items}:
            parent = self._root / key
            directories.add(parent)
            directories |= self._make_directories(parent, created)
        return directories, created

    def _in_pool(
        self, files: Sequence[tuple[Path | str, bytes]], keys: Sequence[str], *, fsync: bool
    ) -> list[tuple[str, OSError]]:
        """Write every new file with the pool (and fsync it when syncing per file): one task
        per thread, each taking the next file until none is left (no future per file, and no
        lock: `deque.popleft` is atomic; a contended lock hands the GIL over once more per
        file). Returns the failures, with their keys, once every write has ended."""
        queue = deque(zip(keys, files, strict=True))
        failures: list[tuple[str, OSError]] = []

        def drain() -> None:
            while True:
                try:
                    key, (path, data) = queue.popleft()
                except IndexError:
                    return
                try:
                    write_new_file(path, data, fsync=fsync)
                except OSError as error:
                    failures.append((key, error))

        tasks = [self._sync_pool.submit(drain) for _ in range(min(self._threads, len(files)))]
        wait(tasks)
        for task in tasks:
            task.result()
        return failures

    def _sync_directories(self, directories: set[Path]) -> tuple[str, OSError] | None:
        """fsync every directory; the first failure, with its key, if any.

        A few (a blob-ingest batch has one, three when its directory is new) are synced on
        the calling thread: in the pool they would queue behind the file writes of a batch
        stored concurrently, and this batch would end only when that one does. More go to the
        pool, in parallel."""
        if len(directories) <= INLINE_DIRECTORY_SYNCS:
            for directory in sorted(directories):
                try:
                    _fsync_directory(directory)
                except OSError as failure:
                    return key_of(self._root, directory), failure
            return None
        syncs = {
            key_of(self._root, directory): self._sync_pool.submit(_fsync_directory, directory)
            for directory in sorted(directories)
        }
        wait(syncs.values())
        for key, future in syncs.items():
            error = future.exception()
            if isinstance(error, OSError):
                return key, error
            future.result()
        return None

    def _mark_durable(
        self,
        new_directories: set[Path],
        items: Sequence[tuple[str, bytes]],
        directories: set[Path],
    ) -> None:
        with self._lock:
            self._durable_directories |= new_directories
        logger.debug(
            "blobs written",
            extra={
                "objects": len(items),
                "bytes": sum(len(data) for _, data in items),
                "directories_synced": len(directories),
            },
        )

    def _do_get(self, path: str) -> bytes:
        try:
            return (self._root / path).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFoundError(path) from None
        except OSError as error:
            raise StorageError("get", path, describe_os_error(error)) from error

    def _do_exists(self, path: str) -> bool:
        try:
            status = os.stat(self._root / path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as error:
            raise StorageError("exists", path, describe_os_error(error)) from error
        return stat.S_ISREG(status.st_mode)

    def _do_delete_many(self, paths: Sequence[str]) -> None:
        failures: list[tuple[str, OSError]] = []
        for path in paths:
            try:
                os.unlink(self._root / path)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                continue
            except OSError as error:
                failures.append((path, error))
        if failures:
            first_path, first_error = failures[0]
            detail = describe_os_error(first_error)
            if len(failures) > 1:
                detail += f" ({len(failures)} of {len(paths)} deletes failed)"
            raise StorageError("delete_many", first_path, detail) from first_error

    def _do_iter_objects(self, prefix: str) -> Iterator[StoredObject]:
        for key, status in walk_files(self._root, prefix):
            if key.startswith(prefix) and is_blob_path(key):
                yield StoredObject(
                    path=key,
                    size=status.st_size,
                    modified=datetime.fromtimestamp(status.st_mtime, UTC),
                )

    def _do_check(self) -> None:
        if not self._root.is_dir():
            raise StorageError("check", None, f"{self._root} is not a directory")
        if not os.access(self._root, os.W_OK | os.X_OK):
            raise StorageError("check", None, f"{self._root} is not writable")

    def _do_close(self) -> None:
        self._sync_pool.shutdown(wait=True)
        logger.debug("blob storage closed", extra={"backend": "file", "root": str(self._root)})

    # -- maintenance ----------------------------------------------------------------------------

    def remove_temporary_files(self, older_than: timedelta, now: datetime | None = None) -> int:
        """Delete temporary files a crashed writer left, older than `older_than`; the count.

        Keep `older_than` far above the longest `put_many` (an hour is plenty), so that a
        batch still being written is never touched.
        """
        self._check_open()
        cutoff = (now or datetime.now(UTC)) - older_than
        removed = 0
        for directory, entry in walk_entries(self._root, ""):
            if not entry.name.startswith(TEMPORARY_PREFIX):
                continue
            try:
                status = entry.stat(follow_symlinks=False)
                if not stat.S_ISREG(status.st_mode):
                    continue
                if datetime.fromtimestamp(status.st_mtime, UTC) >= cutoff:
                    continue
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            except OSError as error:
                raise StorageError(
                    "remove_temporary_files",
                    key_of(self._root, directory),
                    describe_os_error(error),
                ) from error
            removed += 1
        if removed:
            logger.info(
                "removed stale temporary blob files",
                extra={"files": removed, "root": str(self._root)},
            )
        return removed

    # -- helpers --------------------------------------------------------------------------------

    def _create_root(self) -> None:
        try:
            missing = [p for p in (self._root, *self._root.parents) if not p.exists()]
            self._root.mkdir(parents=True, exist_ok=True)
            if not self._root.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            for directory in missing:
                _fsync_directory(directory.parent)
        except OSError as error:
            raise StorageError("open", None, f"{self._root}: {describe_os_error(error)}") from error
        self._durable_directories.add(self._root)

    def _make_directories(self, directory: Path, created: set[Path]) -> set[Path]:
        """Create `directory` and its missing ancestors below the root.

        Returns the parents to fsync: those of every directory not yet known durable. The
        directories themselves are added to `created`, to be marked durable after the sync.
        """
        to_sync: set[Path] = set()
        chain = [directory, *directory.parents]
        below_root = chain[: chain.index(self._root)] if self._root in chain else []
        for current in reversed(below_root):
            with self._lock:
                durable = current in self._durable_directories
            if durable or current in created:
                continue
            with contextlib.suppress(FileExistsError):
                os.mkdir(current)
            to_sync.add(current.parent)
            created.add(current)
        return to_sync

    def _remove_quietly(self, paths: Iterable[Path | str]) -> None:
        for path in paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except OSError:
                logger.warning("could not remove a temporary blob file", extra={"file": str(path)})


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

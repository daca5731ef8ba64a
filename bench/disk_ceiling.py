"""The disk's own ceiling: durable files written with nothing else running, so that a
blob-ingest run can be read against what this disk allows at all (docs/benchmarks.md, Blob
ingest).

- 4 KiB files, the batched run's ceiling: written by the filesystem backend's pool size of
  threads and made durable as the backend does (`file`: fsync each file, then the
  directory; `filesystem`: one `syncfs` a batch of the worker's batch size).
- 1 MiB files, the disk's own batched/one-at-a-time ratio: the same batched writes against
  the same files written and synced one at a time by one thread, which is what the per-chunk
  mode does with its disk. The per-chunk mode also waits for PostgreSQL and Kafka between
  files, so the worker's ratio can exceed the disk's; but the smaller the disk's own ratio,
  the more of the 1 MiB target has to come from the rest of the path.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from workers.common.storage.filesystem import DEFAULT_SYNC_THREADS
from workers.common.storage.filesystem_sync import SyncMethod, syncfs

#: At most this many bytes of distinct random payloads are held; files beyond reuse them
#: (nothing on a local filesystem deduplicates).
_PAYLOAD_POOL_BYTES: Final = 64 * 1024 * 1024


@dataclass(frozen=True)
class DiskCeiling:
    files: int
    seconds: float
    file_bytes: int = 4096

    @property
    def files_per_second(self) -> float:
        return self.files / self.seconds

    @property
    def mb_per_second(self) -> float:
        return self.files * self.file_bytes / self.seconds / 1e6


def pooled_ceiling(ceilings: Sequence[DiskCeiling]) -> DiskCeiling:
    """The mean of the measured rates, as one `DiskCeiling`: the disk's average capacity
    around the run. (Pooling files over seconds would weigh the slower measurement more,
    and so flatter the run when the disk swings between the two.)"""
    rate = sum(c.files_per_second for c in ceilings) / len(ceilings)
    files = sum(c.files for c in ceilings)
    return DiskCeiling(files, files / rate, ceilings[0].file_bytes)


def measure_disk_ceiling(
    scratch: Path,
    size: int,
    files: int,
    method: SyncMethod,
    batch: int,
    threads: int = DEFAULT_SYNC_THREADS,
) -> DiskCeiling:
    """`files` random `size`-byte files, each created and written by `threads` threads, made
    durable with `method`: `file` fsyncs each file and then the directory; `filesystem`
    writes `batch` files at a time and syncs each batch with one `syncfs`, the descriptor
    opened before the batch's first write."""
    directory = scratch / f"disk-ceiling-{method}-{size}-{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    payloads = [os.urandom(size) for _ in range(max(1, min(files, _PAYLOAD_POOL_BYTES // size)))]
    fsync_each = method == "file"

    def write(index: int) -> None:
        descriptor = os.open(directory / str(index), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(descriptor, payloads[index % len(payloads)])
            if fsync_each:
                os.fsync(descriptor)
        finally:
            os.close(descriptor)

    os.sync()
    started = time.perf_counter()
    step = files if fsync_each else batch
    with ThreadPoolExecutor(threads) as pool:
        for first in range(0, files, step):
            descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                list(pool.map(write, range(first, min(files, first + step))))
                if fsync_each:
                    os.fsync(descriptor)
                else:
                    syncfs(descriptor)
            finally:
                os.close(descriptor)
    # The files stay until the bench ends: ext4 skips the inodes of files deleted within the
    # last minute when it allocates new ones, which made every file created after a delete
    # cost several times the CPU (docs/benchmarks.md, Blob ingest).
    return DiskCeiling(files, time.perf_counter() - started, size)


def measure_large_file_ratio(
    scratch: Path, size: int, files: int, method: SyncMethod, batch: int
) -> tuple[DiskCeiling, DiskCeiling]:
    """The `size` ceiling batched as the worker batches, and one file at a time (one thread,
    each file synced before the next is written: a batch of one)."""
    batched = measure_disk_ceiling(scratch, size, files, method, batch)
    one_by_one = measure_disk_ceiling(scratch, size, max(1, files // 3), method, 1, threads=1)
    return batched, one_by_one


def pooled_ratio(
    measured: Sequence[tuple[DiskCeiling, DiskCeiling]],
) -> tuple[DiskCeiling, DiskCeiling, float]:
    """`measure_large_file_ratio`'s pairs pooled: the batched ceiling, the one-at-a-time
    ceiling and the ratio of their rates."""
    batched = pooled_ceiling([pair[0] for pair in measured])
    one_by_one = pooled_ceiling([pair[1] for pair in measured])
    return batched, one_by_one, batched.files_per_second / one_by_one.files_per_second


CEILING_DESCRIPTIONS: Final[dict[SyncMethod, str]] = {
    "file": f"4 KiB files written and fsynced one by one by {DEFAULT_SYNC_THREADS} threads",
    "filesystem": f"4 KiB files written by {DEFAULT_SYNC_THREADS} threads, one syncfs a batch",
}

"""Writing one new file durably: create it, write it, `fsync` it (docs/blob-ingest.md, Storage);
or leave the `fsync` to a caller that syncs the whole filesystem once per batch.

Objects of `DIRECT_IO_MIN_BYTES` and more are written with direct I/O (`O_DIRECT`): the
bytes go from an aligned buffer straight to the disk instead of being copied into the page
cache first. A blob is written once and rarely read back soon, so caching it buys nothing,
and the copy costs CPU: on the development VM, 8 threads writing and fsyncing 1 MiB files
moved 2.6 to 3.3 times the bytes per second with a third of the CPU (docs/benchmarks.md, Blob
ingest). Below that size the page cache is as fast and needs no staging copy.

Direct I/O wants the buffer, the file offset and the length aligned. Each writing thread
stages the data through its own page-aligned buffer of `STAGING_BUFFER_BYTES` (allocated on
its first large write and kept), the last piece is padded with zeros to `ALIGNMENT` and the
file is then truncated to its real size. A sync is still needed afterwards: direct I/O
bypasses the page cache, not the disk's write cache, and the file's size and extents are
metadata. A filesystem without direct I/O (`fcntl` refuses `O_DIRECT` with `EINVAL`) gets the
ordinary buffered write.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import threading
from pathlib import Path
from typing import Final

#: Objects at least this large are written with direct I/O.
DIRECT_IO_MIN_BYTES: Final = 256 * 1024
#: Alignment of buffer, offsets and lengths for direct I/O: the page size, which is a
#: multiple of any disk's logical block size (512 or 4096 bytes).
ALIGNMENT: Final = mmap.PAGESIZE
#: Size of each thread's staging buffer, and of each direct write.
STAGING_BUFFER_BYTES: Final = 1024 * 1024


class _StagingBuffer(threading.local):
    """The calling thread's page-aligned buffer (an anonymous mapping), made on first use."""

    buffer: mmap.mmap | None = None

    def get(self) -> mmap.mmap:
        if self.buffer is None:
            self.buffer = mmap.mmap(-1, STAGING_BUFFER_BYTES)
        return self.buffer


_staging = _StagingBuffer()


def write_synced_file(path: Path | str, data: bytes | memoryview) -> None:
    """Create `path` (it must not exist), write `data` and fsync it; a failed write removes
    the file it created."""
    write_new_file(path, data, fsync=True)


def write_new_file(path: Path | str, data: bytes | memoryview, *, fsync: bool) -> None:
    """`write_synced_file`, or without the `fsync` for a caller that makes the file durable
    another way (one `syncfs` for a whole batch, `filesystem_sync.py`)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        if len(data) >= DIRECT_IO_MIN_BYTES and _enable_direct_io(descriptor):
            _write_direct(descriptor, memoryview(data).cast("B"))
        else:
            _write_buffered(descriptor, memoryview(data))
        if fsync:
            os.fsync(descriptor)
    except BaseException:
        os.close(descriptor)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(descriptor)


def _enable_direct_io(descriptor: int) -> bool:
    """Switch the descriptor to direct I/O; False where the filesystem has none."""
    try:
        flags = fcntl.fcntl(descriptor, fcntl.F_GETFL)
        fcntl.fcntl(descriptor, fcntl.F_SETFL, flags | os.O_DIRECT)
    except OSError as error:
        if error.errno == errno.EINVAL:
            return False
        raise
    return True


def _write_buffered(descriptor: int, view: memoryview) -> None:
    while view:
        view = view[os.write(descriptor, view) :]


def _write_direct(descriptor: int, data: memoryview) -> None:
    buffer = _staging.get()
    size = len(data)
    offset = 0
    with memoryview(buffer) as staging:
        while offset < size:
            length = min(STAGING_BUFFER_BYTES, size - offset)
            staging[:length] = data[offset : offset + length]
            padded = -(-length // ALIGNMENT) * ALIGNMENT
            if padded != length:
                staging[length:padded] = bytes(padded - length)
            done = 0
            while done < padded:
                # A short write (the disk filled up in between) is followed by one that
                # fails with the reason, as long as the rest stays aligned.
                written = os.pwrite(descriptor, staging[done:padded], offset + done)
                done += written
                if written == 0 or done % ALIGNMENT:
                    raise OSError(errno.EIO, f"direct write stopped at {offset + done} bytes")
            offset += length
    if size % ALIGNMENT:
        os.ftruncate(descriptor, size)

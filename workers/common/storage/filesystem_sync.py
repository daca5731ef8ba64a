"""How the filesystem backend makes a batch durable: an `fsync` per file, or one `syncfs` per
batch (docs/blob-ingest.md, Storage).

`fsync` per file (`file`) commits the filesystem's journal for each file, and the disk
flushes its cache each time; concurrent calls share a commit, so a pool of threads helps, but
small files still cost a journal commit each few. `syncfs` (`filesystem`) writes back every
dirty page of the filesystem, commits the journal once and flushes the disk once: a batch of
a thousand 4 KiB files needs one commit instead of hundreds. On the development VM, 5,000
files became durable 2 to 3 times faster (docs/benchmarks.md, Blob ingest).

`syncfs` is only trusted where it reports failures and where it is known to cover data and
metadata:

- Linux 5.8 or later: before, `syncfs` returned 0 even when writing back a page had failed;
  since, it returns the error of any writeback on the filesystem since the descriptor was
  opened, so the descriptor is opened before the batch's first write;
- ext2/3/4, XFS or Btrfs, whose `sync_fs` commits the journal (or log) and flushes the disk;
  tmpfs, where nothing needs syncing. A network filesystem (NFS, FUSE) or an overlay gets
  `fsync` per file.

Its cost is what else is dirty on the same filesystem: every batch writes it back too. Give
blob storage a filesystem (volume) of its own; `BLOB_STORAGE_SYNC=file` forces `fsync` per
file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from pathlib import Path
from typing import Final, Literal

#: What `BLOB_STORAGE_SYNC` accepts.
SyncSetting = Literal["auto", "file", "filesystem"]
SYNC_SETTINGS: Final[tuple[SyncSetting, ...]] = ("auto", "file", "filesystem")
#: How a backend syncs: per file, or the whole filesystem once per batch.
SyncMethod = Literal["file", "filesystem"]
SYNC_METHODS: Final[tuple[SyncMethod, ...]] = ("file", "filesystem")

#: `statfs` magic numbers of the filesystems whose `syncfs` is trusted.
TRUSTED_FILESYSTEMS: Final = {
    0xEF53: "ext4",  # ext2, ext3 and ext4 share it
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
}
#: The first Linux release whose `syncfs` returns writeback errors.
ERRORS_REPORTED_SINCE: Final = (5, 8)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class SyncUnavailable(Exception):
    """`syncfs` cannot be trusted here; the message says why."""


def parse_sync_setting(value: str) -> SyncSetting:
    """`value` as a `SyncSetting`; `ValueError` naming the choices otherwise."""
    for setting in SYNC_SETTINGS:
        if value == setting:
            return setting
    raise ValueError(f"blob storage sync must be one of {', '.join(SYNC_SETTINGS)}, not {value!r}")


def syncfs(descriptor: int) -> None:
    """Write back and commit the whole filesystem `descriptor` is on; `OSError` with the first
    writeback error since the descriptor was opened (or since its last `syncfs`)."""
    if _libc.syncfs(descriptor) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def check_filesystem_sync(path: Path) -> None:
    """`SyncUnavailable` unless `syncfs` reports errors and covers data and metadata for the
    filesystem holding `path`."""
    release = kernel_release()
    if platform.system() != "Linux" or release is None or release < ERRORS_REPORTED_SINCE:
        raise SyncUnavailable(
            f"syncfs reports writeback errors from Linux 5.8 on; this is "
            f"{platform.system()} {platform.release()}"
        )
    magic = filesystem_magic(path)
    if magic not in TRUSTED_FILESYSTEMS:
        raise SyncUnavailable(
            f"{path} is on a filesystem of type {magic:#x}, not one of "
            + ", ".join(sorted(set(TRUSTED_FILESYSTEMS.values())))
        )


def choose_sync_method(path: Path, setting: SyncSetting) -> SyncMethod:
    """`filesystem` when asked for or (with `auto`) when `check_filesystem_sync` allows it;
    asking for `filesystem` where it is not trusted raises `SyncUnavailable`."""
    if setting == "file":
        return "file"
    try:
        check_filesystem_sync(path)
    except SyncUnavailable:
        if setting == "filesystem":
            raise
        return "file"
    return "filesystem"


def kernel_release() -> tuple[int, int] | None:
    """(major, minor) of the running Linux kernel, None if it cannot be read."""
    parts = platform.release().split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or "0")
    except (IndexError, ValueError):
        return None


class _StatFs(ctypes.Structure):
    # Only the leading `f_type` is read; the rest of `struct statfs` (120 bytes on 64-bit
    # Linux) is room for the kernel to fill.
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 256)]


def filesystem_magic(path: Path) -> int:
    """The `f_type` of `statfs(path)`: which filesystem holds `path`."""
    result = _StatFs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(result)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(path))
    return int(result.f_type) & 0xFFFFFFFF

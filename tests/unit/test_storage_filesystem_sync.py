"""One `syncfs` per batch instead of an `fsync` per file and directory: when it is chosen,
what it calls and in which order, and what a failed sync leaves behind."""

from __future__ import annotations

import errno
import os
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from workers.common.settings import Settings
from workers.common.storage import (
    FilesystemBlobStorage,
    StorageError,
    filesystem_sync,
    open_blob_storage,
    random_blob_path,
)
from workers.common.storage import filesystem as filesystem_module
from workers.common.storage.filesystem import FILESYSTEM_SYNC_MIN_OBJECTS, TEMPORARY_PREFIX
from workers.common.storage.filesystem_sync import (
    SyncUnavailable,
    check_filesystem_sync,
    choose_sync_method,
    filesystem_magic,
    kernel_release,
    parse_sync_setting,
    syncfs,
)

SECRET_PAYLOAD = b"payload-bytes-that-must-never-appear-in-errors"
NFS_MAGIC = 0x6969


def filesystem_sync_trusted(path: Path) -> bool:
    try:
        check_filesystem_sync(path)
    except SyncUnavailable:
        return False
    return True


@pytest.fixture
def root(tmp_path: Path) -> Path:
    if not filesystem_sync_trusted(tmp_path):
        pytest.skip(f"syncfs is not trusted for {tmp_path} on this machine")
    return tmp_path / "blobs"


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every `os.fsync`, `syncfs`, `os.replace` and file creation, in order."""
    recorded: list[tuple[str, str]] = []
    real_fsync, real_replace, real_open = os.fsync, os.replace, os.open

    def fsync(descriptor: int) -> None:
        recorded.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def recorded_syncfs(descriptor: int) -> None:
        recorded.append(("syncfs", os.readlink(f"/proc/self/fd/{descriptor}")))
        syncfs(descriptor)

    def replace(source: Any, target: Any) -> None:
        recorded.append(("replace", str(target)))
        real_replace(source, target)

    def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        kind = "open directory" if flags & os.O_DIRECTORY else "create"
        recorded.append((kind, str(path)))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(filesystem_module, "syncfs", recorded_syncfs)
    return recorded


@pytest.fixture
def storage(root: Path) -> Iterator[FilesystemBlobStorage]:
    with FilesystemBlobStorage(root, sync="filesystem") as storage:
        yield storage


def kinds(events: list[tuple[str, str]]) -> list[str]:
    return [kind for kind, _ in events]


# -- choosing ---------------------------------------------------------------------------------


def test_auto_takes_syncfs_on_a_trusted_local_filesystem(root: Path) -> None:
    with FilesystemBlobStorage(root) as storage:
        assert storage.sync_method == "filesystem"
    with FilesystemBlobStorage(root, sync="file") as storage:
        assert storage.sync_method == "file"


@pytest.mark.parametrize("release", ["5.4.0-150-generic", "4.19.0", "5.7.19"])
def test_kernels_whose_syncfs_hides_writeback_errors_sync_per_file(
    root: Path, monkeypatch: pytest.MonkeyPatch, release: str
) -> None:
    monkeypatch.setattr(platform, "release", lambda: release)
    assert choose_sync_method(root.parent, "auto") == "file"
    with pytest.raises(SyncUnavailable, match=rf"from Linux 5\.8 on; this is Linux {release}"):
        choose_sync_method(root.parent, "filesystem")


def test_an_untrusted_filesystem_syncs_per_file_and_refuses_syncfs_when_forced(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(filesystem_sync, "filesystem_magic", lambda path: NFS_MAGIC)
    with FilesystemBlobStorage(root) as storage:
        assert storage.sync_method == "file"
    with pytest.raises(
        StorageError,
        match=r"^storage open failed: .*/blobs: syncfs cannot be used: .*/blobs is on a "
        r"filesystem of type 0x6969, not one of btrfs, ext4, tmpfs, xfs$",
    ):
        FilesystemBlobStorage(root, sync="filesystem")


def test_kernel_release_and_filesystem_magic_read_the_real_machine(tmp_path: Path) -> None:
    release = kernel_release()
    assert release is not None
    assert os.uname().release.startswith(f"{release[0]}.{release[1]}")
    assert filesystem_magic(Path("/proc")) == 0x9FA0  # procfs
    with pytest.raises(FileNotFoundError):
        filesystem_magic(tmp_path / "missing")


def test_syncfs_raises_the_errno_of_a_failed_call() -> None:
    descriptor = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    os.close(descriptor)
    with pytest.raises(OSError, match="Bad file descriptor") as raised:
        syncfs(descriptor)
    assert raised.value.errno == errno.EBADF


# -- syncing -------------------------------------------------------------------------------------


def test_put_new_many_syncs_the_filesystem_once_after_the_writes_and_no_file(
    storage: FilesystemBlobStorage, root: Path, events: list[tuple[str, str]]
) -> None:
    items = [(f"aa/0001/new{i}", b"n" * i) for i in range(5)]
    storage.put_new_many(items)
    order = kinds(events)
    assert "fsync" not in order
    assert order.count("syncfs") == 1
    # The descriptor is opened before the first file, so its syncfs reports their errors.
    assert order.index("open directory") < order.index("create") < order.index("syncfs")
    assert order[-1] == "syncfs"
    assert events[order.index("open directory")][1] == str(root)
    assert all(storage.get(path) == data for path, data in items)


def test_put_many_syncs_the_contents_before_the_renames_and_the_names_after(
    storage: FilesystemBlobStorage, root: Path, events: list[tuple[str, str]]
) -> None:
    items = [(random_blob_path(), b"x") for _ in range(4)]
    storage.put_many(items)
    order = [kind for kind in kinds(events) if kind in ("fsync", "syncfs", "replace")]
    assert order == ["syncfs", *["replace"] * 4, "syncfs"]
    assert all(storage.get(path) == data for path, data in items)
    assert not [p for p in root.rglob("*") if p.name.startswith(TEMPORARY_PREFIX)]


@pytest.mark.parametrize("operation", ["put_many", "put_new_many"])
def test_a_batch_too_small_for_syncfs_is_synced_per_file(
    storage: FilesystemBlobStorage, events: list[tuple[str, str]], operation: str
) -> None:
    items = [(random_blob_path(), b"s") for _ in range(FILESYSTEM_SYNC_MIN_OBJECTS - 1)]
    getattr(storage, operation)(items)
    order = kinds(events)
    assert "syncfs" not in order
    # Each file, then its directory and the two new directories' parents.
    assert order.count("fsync") >= len(items) + 1
    assert all(storage.get(path) == b"s" for path, _ in items)


def failing_syncfs(descriptor: int) -> None:
    raise OSError(errno.EIO, os.strerror(errno.EIO))


@pytest.mark.parametrize("operation", ["put_many", "put_new_many"])
def test_a_failed_syncfs_fails_the_batch_and_leaves_none_of_it(
    storage: FilesystemBlobStorage,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
    operation: str,
) -> None:
    items = [(random_blob_path(), SECRET_PAYLOAD) for _ in range(FILESYSTEM_SYNC_MIN_OBJECTS)]
    monkeypatch.setattr(filesystem_module, "syncfs", failing_syncfs)
    with pytest.raises(StorageError) as raised:
        getattr(storage, operation)(items)
    message = str(raised.value)
    assert message == f"storage {operation} failed: Input/output error (EIO)"
    assert SECRET_PAYLOAD.decode() not in message
    assert [p for p in root.rglob("*") if p.is_file()] == []
    monkeypatch.undo()
    storage.put_new_many(items)  # the batch can be written again
    assert all(storage.get(path) == SECRET_PAYLOAD for path, _ in items)


def test_the_settings_choose_the_file_storage_sync(root: Path) -> None:
    url = root.as_uri()
    for setting, method in (("file", "file"), ("filesystem", "filesystem"), ("auto", "filesystem")):
        storage = open_blob_storage(Settings.from_env({"BLOB_STORAGE_SYNC": setting}), url)
        assert isinstance(storage, FilesystemBlobStorage)
        assert storage.sync_method == method
        storage.close()
    with pytest.raises(ValueError, match="must be one of auto, file, filesystem, not 'never'"):
        parse_sync_setting("never")

"""Filesystem backend specifics: fsync batching, atomic renames, cleanup, failures.

These tests sync per file (`sync="file"`); one `syncfs` per batch is in
`test_storage_filesystem_sync.py`."""

from __future__ import annotations

import errno
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from harness.waiting import wait_for
from workers.common.storage import (
    BlobNotFoundError,
    FilesystemBlobStorage,
    StorageError,
    random_blob_path,
    synced_file,
)
from workers.common.storage import filesystem as filesystem_module
from workers.common.storage.filesystem import TEMPORARY_PREFIX

SECRET_PAYLOAD = b"payload-bytes-that-must-never-appear-in-errors"


@dataclass
class SyncRecorder:
    """Records every `os.fsync` (by the path of its descriptor) and `os.replace`, in order."""

    events: list[tuple[str, str]] = field(default_factory=list)

    def synced(self) -> list[str]:
        return [path for kind, path in self.events if kind == "fsync"]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> SyncRecorder:
    recorded = SyncRecorder()
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        recorded.events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source: Any, target: Any) -> None:
        recorded.events.append(("replace", str(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return recorded


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


@pytest.fixture
def storage(root: Path) -> Iterator[FilesystemBlobStorage]:
    with FilesystemBlobStorage(root, sync="file") as storage:
        yield storage


def temporary_files(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.name.startswith(TEMPORARY_PREFIX)]


def regular_files(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


# -- durability: fsync once per file and once per directory per batch ---------------------------


def test_batch_into_known_directories_syncs_each_file_and_each_directory_once(
    storage: FilesystemBlobStorage, root: Path, recorder: SyncRecorder
) -> None:
    storage.put_many([("aa/0001/seed", b"s"), ("aa/0002/seed", b"s")])
    recorder.events.clear()
    items = [(f"aa/0001/file{i}", b"1" * i) for i in range(3)]
    items += [(f"aa/0002/file{i}", b"2" * i) for i in range(2)]

    storage.put_many(items)

    synced = recorder.synced()
    assert len(synced) == len(items) + 2
    assert Counter(synced).most_common(1)[0][1] == 1, "something was synced twice"
    directories = [path for path in synced if not Path(path).name.startswith(TEMPORARY_PREFIX)]
    assert sorted(directories) == [str(root / "aa/0001"), str(root / "aa/0002")]


def test_new_directories_also_sync_their_parents_once(
    storage: FilesystemBlobStorage, root: Path, recorder: SyncRecorder
) -> None:
    items = [("aa/0001/x1", b"1"), ("aa/0001/x2", b"2"), ("aa/0002/x3", b"3")]
    storage.put_many(items)
    synced = recorder.synced()
    files = [path for path in synced if Path(path).name.startswith(TEMPORARY_PREFIX)]
    directories = sorted(set(synced) - set(files))
    assert len(files) == 3
    assert directories == sorted(str(root / d) for d in ("", "aa", "aa/0001", "aa/0002"))
    assert len(synced) == 3 + 4

    # The same directories again: now known durable, only the objects' directories.
    recorder.events.clear()
    storage.put_many([("aa/0001/y1", b"1"), ("aa/0001/y2", b"2"), ("aa/0002/y3", b"3")])
    assert len(recorder.synced()) == 3 + 2


def test_directories_made_by_another_process_are_synced_once_by_this_one(
    storage: FilesystemBlobStorage, root: Path, recorder: SyncRecorder
) -> None:
    storage.put("aa/0001/first", b"1")
    # Like a second process: knows nothing yet.
    with FilesystemBlobStorage(root, sync="file") as other:
        recorder.events.clear()
        other.put_many([("aa/0001/second", b"2"), ("aa/0001/third", b"3")])
        directories = [p for p in recorder.synced() if TEMPORARY_PREFIX not in p]
        assert sorted(directories) == sorted(str(root / d) for d in ("", "aa", "aa/0001"))
        recorder.events.clear()
        other.put("aa/0001/fourth", b"4")
        assert len(recorder.synced()) == 2


def test_files_are_synced_before_the_renames_and_directories_after(
    storage: FilesystemBlobStorage, recorder: SyncRecorder
) -> None:
    storage.put_many([(random_blob_path(), b"x") for _ in range(4)])
    kinds = [
        "file" if kind == "fsync" and TEMPORARY_PREFIX in path else kind
        for kind, path in recorder.events
    ]
    first_replace, last_replace = kinds.index("replace"), len(kinds) - kinds[::-1].index("replace")
    assert set(kinds[:first_replace]) == {"file"}
    assert kinds[first_replace:last_replace] == ["replace"] * 4
    assert set(kinds[last_replace:]) == {"fsync"}


def test_put_new_many_writes_in_place_and_syncs_each_file_and_directory_once(
    storage: FilesystemBlobStorage, root: Path, recorder: SyncRecorder
) -> None:
    storage.put_new_many([("aa/0001/seed", b"s")])
    recorder.events.clear()
    items = [(f"aa/0001/new{i}", b"n" * i) for i in range(5)]
    storage.put_new_many(items)
    assert "replace" not in {kind for kind, _ in recorder.events}
    assert sorted(recorder.synced()) == sorted(
        [str(root / path) for path, _ in items] + [str(root / "aa/0001")]
    )
    assert all(storage.get(path) == data for path, data in items)
    assert temporary_files(root) == []


def test_put_new_many_refuses_a_path_that_holds_an_object_and_leaves_none_of_the_batch(
    storage: FilesystemBlobStorage, root: Path
) -> None:
    storage.put("aa/0001/taken", b"old")
    items = [("aa/0001/fresh1", b"1"), ("aa/0001/taken", b"new"), ("aa/0001/fresh2", b"2")]
    with pytest.raises(StorageError, match=r"put_new_many 'aa/0001/taken'.*File exists"):
        storage.put_new_many(items)
    assert regular_files(root) == {"aa/0001/taken"}
    assert storage.get("aa/0001/taken") == b"old"


def test_put_new_many_failing_mid_batch_leaves_none_of_its_objects(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FilesystemBlobStorage(root, sync_threads=2, sync="file")
    items = [(random_blob_path(), SECRET_PAYLOAD) for _ in range(6)]
    monkeypatch.setattr(os, "fsync", fail_on_call(3, os.fsync))
    with pytest.raises(StorageError) as raised:
        storage.put_new_many(items)
    assert "No space left on device" in str(raised.value)
    assert SECRET_PAYLOAD.decode() not in str(raised.value)
    assert regular_files(root) == set()
    storage.close()


# -- atomicity and cleanup ------------------------------------------------------------------------


def fail_on_call(number: int, real: Callable[..., Any]) -> Callable[..., Any]:
    """A stand-in for `real` that raises ENOSPC on its `number`-th call (1-based)."""
    calls = 0

    def stand_in(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == number:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args)

    return stand_in


def test_failure_while_syncing_leaves_no_object_and_no_temporary_file(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One sync thread: "the second fsync" is then the second object's.
    storage = FilesystemBlobStorage(root, sync_threads=1, sync="file")
    items = [(random_blob_path(), SECRET_PAYLOAD) for _ in range(3)]
    monkeypatch.setattr(os, "fsync", fail_on_call(2, os.fsync))
    with pytest.raises(StorageError) as raised:
        storage.put_many(items)
    message = str(raised.value)
    assert "put_many" in message
    assert items[1][0] in message
    assert "No space left on device" in message
    assert SECRET_PAYLOAD.decode() not in message
    assert regular_files(root) == set()
    assert temporary_files(root) == []


def test_failure_while_renaming_keeps_finished_objects_whole_and_cleans_the_rest(
    storage: FilesystemBlobStorage, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = [("aa/0000/first", b"first"), ("aa/0000/second", b"second"), ("aa/0000/third", b"3")]
    monkeypatch.setattr(os, "replace", fail_on_call(2, os.replace))
    with pytest.raises(StorageError, match="aa/0000/second"):
        storage.put_many(items)
    monkeypatch.undo()
    assert regular_files(root) == {"aa/0000/first"}
    assert storage.get("aa/0000/first") == b"first"
    assert temporary_files(root) == []


def test_failure_in_the_middle_of_a_write_is_never_visible(
    storage: FilesystemBlobStorage, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = synced_file.write_new_file

    def write_half_then_fail(path: Path, data: bytes, *, fsync: bool) -> None:
        real_write(path, data[: len(data) // 2], fsync=fsync)
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(filesystem_module, "write_new_file", write_half_then_fail)
    path = random_blob_path()
    with pytest.raises(StorageError, match="Input/output error"):
        storage.put(path, SECRET_PAYLOAD)
    monkeypatch.undo()
    assert not storage.exists(path)
    assert regular_files(root) == set()
    assert temporary_files(root) == []


def test_a_batch_in_flight_is_invisible_until_renamed(
    storage: FilesystemBlobStorage, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While put_many is paused between writing and renaming, readers see nothing of it."""
    reached_sync, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def paused_fsync(descriptor: int) -> None:
        if not reached_sync.is_set():
            reached_sync.set()
            assert release.wait(timeout=30), "the test never released the writer"
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", paused_fsync)
    items = [(random_blob_path(), os.urandom(50_000)) for _ in range(4)]
    errors: list[BaseException] = []

    def write() -> None:
        try:
            storage.put_many(items)
        except BaseException as error:
            errors.append(error)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert reached_sync.wait(timeout=30), "put_many never reached its fsync phase"
        # Written (by the sync threads), under temporary names; no rename before every sync.
        wait_for(lambda: len(temporary_files(root)) == len(items), 10, "every temporary file")
        assert list(storage.iter_objects()) == []
        assert not any(storage.exists(path) for path, _ in items)
    finally:
        release.set()
        writer.join(timeout=30)
    assert not writer.is_alive()
    assert errors == []
    assert {o.path for o in storage.iter_objects()} == {path for path, _ in items}
    assert temporary_files(root) == []


def test_iter_objects_skips_temporary_hidden_and_linked_files(
    storage: FilesystemBlobStorage, root: Path, tmp_path: Path
) -> None:
    storage.put("ab/cdef/real", b"real")
    (root / "ab/cdef" / f"{TEMPORARY_PREFIX}0123abcd").write_bytes(b"half")
    (root / ".hidden").write_bytes(b"h")
    (root / ".hidden-dir").mkdir()
    (root / ".hidden-dir/file").write_bytes(b"h")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (root / "linked").symlink_to(outside)
    (root / "ab/cdef/link").symlink_to(root / "ab/cdef/real")
    assert [o.path for o in storage.iter_objects()] == ["ab/cdef/real"]


def test_remove_temporary_files_deletes_only_stale_ones(
    storage: FilesystemBlobStorage, root: Path
) -> None:
    storage.put("ab/cdef/real", b"real")
    stale = root / "ab/cdef" / f"{TEMPORARY_PREFIX}stale"
    fresh = root / "ab/cdef" / f"{TEMPORARY_PREFIX}fresh"
    stale.write_bytes(b"left by a crash")
    fresh.write_bytes(b"being written")
    two_hours_ago = (datetime.now(UTC) - timedelta(hours=2)).timestamp()
    os.utime(stale, (two_hours_ago, two_hours_ago))
    os.utime(root / "ab/cdef/real", (two_hours_ago, two_hours_ago))

    assert storage.remove_temporary_files(older_than=timedelta(hours=1)) == 1
    assert not stale.exists()
    assert fresh.exists()
    assert storage.get("ab/cdef/real") == b"real"


# -- errors ---------------------------------------------------------------------------------------


def test_root_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="absolute"):
        FilesystemBlobStorage(Path("relative/blobs"))


def test_root_that_is_a_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "blobs").write_bytes(b"")
    with pytest.raises(StorageError, match="open"):
        FilesystemBlobStorage(tmp_path / "blobs")


def test_root_is_created_with_its_parents(tmp_path: Path) -> None:
    with FilesystemBlobStorage(tmp_path / "state" / "blobs") as storage:
        storage.check()
    assert (tmp_path / "state" / "blobs").is_dir()


def test_writing_below_an_object_is_a_storage_error_naming_the_path(
    storage: FilesystemBlobStorage, root: Path
) -> None:
    storage.put("ab/cdef", b"an object where a directory would go")
    with pytest.raises(StorageError) as raised:
        storage.put("ab/cdef/child", SECRET_PAYLOAD)
    assert raised.value.operation == "put_many"
    assert raised.value.path == "ab/cdef/child"
    assert SECRET_PAYLOAD.decode() not in str(raised.value)
    assert temporary_files(root) == []


def test_get_of_a_directory_is_not_found(storage: FilesystemBlobStorage) -> None:
    storage.put("ab/cdef/x", b"x")
    with pytest.raises(BlobNotFoundError):
        storage.get("ab/cdef")
    with pytest.raises(BlobNotFoundError):
        storage.get("ab/cdef/x/below")


def test_delete_failure_is_a_storage_error_after_trying_every_path(
    storage: FilesystemBlobStorage, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [f"ab/cdef/{name}" for name in ("a", "b", "c")]
    storage.put_many([(path, b"x") for path in paths])
    real_unlink = os.unlink

    def unlink(path: Any) -> None:
        if str(path).endswith("/b"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        real_unlink(path)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(StorageError, match=r"delete_many 'ab/cdef/b'.*Permission denied"):
        storage.delete_many(paths)
    monkeypatch.undo()
    assert regular_files(root) == {"ab/cdef/b"}

"""`write_synced_file`: direct I/O for large objects, the page cache for small ones, and the
same durable, whole-or-nothing result either way."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Any

import pytest

from workers.common.storage.synced_file import (
    ALIGNMENT,
    DIRECT_IO_MIN_BYTES,
    STAGING_BUFFER_BYTES,
    write_synced_file,
)


class WriteRecorder:
    """Records, for every `os.pwrite`/`os.write`, whether its descriptor had O_DIRECT set,
    how long it was and at which offset; and every `os.fsync`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.writes: list[tuple[bool, int, int | None]] = []
        self.fsyncs = 0
        real_pwrite, real_write, real_fsync = os.pwrite, os.write, os.fsync

        def direct(descriptor: int) -> bool:
            return bool(fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_DIRECT)

        def pwrite(descriptor: int, data: Any, offset: int) -> int:
            self.writes.append((direct(descriptor), len(data), offset))
            return real_pwrite(descriptor, data, offset)

        def write(descriptor: int, data: Any) -> int:
            self.writes.append((direct(descriptor), len(data), None))
            return real_write(descriptor, data)

        def fsync(descriptor: int) -> None:
            self.fsyncs += 1
            real_fsync(descriptor)

        monkeypatch.setattr(os, "pwrite", pwrite)
        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "fsync", fsync)


def direct_io_supported(folder: Path) -> bool:
    probe = folder / "probe"
    descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        flags = fcntl.fcntl(descriptor, fcntl.F_GETFL)
        fcntl.fcntl(descriptor, fcntl.F_SETFL, flags | os.O_DIRECT)
    except OSError:
        return False
    finally:
        os.close(descriptor)
        probe.unlink()
    return True


@pytest.mark.parametrize(
    "size",
    [
        DIRECT_IO_MIN_BYTES,
        DIRECT_IO_MIN_BYTES + 1,
        STAGING_BUFFER_BYTES,
        3 * STAGING_BUFFER_BYTES + 5,
    ],
)
def test_a_large_object_is_written_directly_in_aligned_pieces_and_keeps_its_size(
    tmp_path: Path, size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not direct_io_supported(tmp_path):
        pytest.skip(f"{tmp_path} has no direct I/O")
    recorder = WriteRecorder(monkeypatch)
    data = os.urandom(size)
    path = tmp_path / "object"
    write_synced_file(path, data)
    assert path.read_bytes() == data
    assert recorder.fsyncs == 1
    assert all(is_direct for is_direct, _, _ in recorder.writes)
    assert all(length % ALIGNMENT == 0 for _, length, _ in recorder.writes)
    assert [offset for _, _, offset in recorder.writes] == list(
        range(0, size, STAGING_BUFFER_BYTES)
    )


def test_a_small_object_goes_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = WriteRecorder(monkeypatch)
    data = os.urandom(DIRECT_IO_MIN_BYTES - 1)
    path = tmp_path / "object"
    write_synced_file(path, memoryview(data))
    assert path.read_bytes() == data
    assert recorder.writes
    assert not any(is_direct for is_direct, _, _ in recorder.writes)
    assert recorder.fsyncs == 1


def test_a_filesystem_without_direct_io_gets_a_buffered_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fcntl = fcntl.fcntl

    def refuse_direct_io(descriptor: int, command: int, argument: int = 0) -> int:
        if command == fcntl.F_SETFL and argument & os.O_DIRECT:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_fcntl(descriptor, command, argument)

    monkeypatch.setattr(fcntl, "fcntl", refuse_direct_io)
    data = os.urandom(2 * STAGING_BUFFER_BYTES + 3)
    path = tmp_path / "object"
    write_synced_file(path, data)
    assert path.read_bytes() == data


def test_a_failed_direct_write_removes_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not direct_io_supported(tmp_path):
        pytest.skip(f"{tmp_path} has no direct I/O")
    real_pwrite = os.pwrite

    def fail_second_piece(descriptor: int, data: Any, offset: int) -> int:
        if offset:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(descriptor, data, offset)

    monkeypatch.setattr(os, "pwrite", fail_second_piece)
    path = tmp_path / "object"
    with pytest.raises(OSError, match="No space left on device"):
        write_synced_file(path, os.urandom(2 * STAGING_BUFFER_BYTES))
    assert not path.exists()


def test_a_short_direct_write_that_breaks_alignment_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not direct_io_supported(tmp_path):
        pytest.skip(f"{tmp_path} has no direct I/O")
    monkeypatch.setattr(os, "pwrite", lambda descriptor, data, offset: 100)
    path = tmp_path / "object"
    with pytest.raises(OSError, match="direct write stopped at 100 bytes"):
        write_synced_file(path, os.urandom(DIRECT_IO_MIN_BYTES))
    assert not path.exists()


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "object"
    path.write_bytes(b"first")
    with pytest.raises(FileExistsError):
        write_synced_file(path, os.urandom(DIRECT_IO_MIN_BYTES))
    assert path.read_bytes() == b"first"

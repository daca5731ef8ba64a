"""Reading a file's chunks: order, hashing, bounds and upstream's details; a debug file is
written to a scratch file that never outlives a refusal or a failure, a bundle is not
written at all."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from workers.assemble.chunked_file import StoredChunk
from workers.assemble.chunks import ChunkAssembler
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
from workers.common.storage import FilesystemBlobStorage, StorageError


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class Blobs:
    def __init__(self, root: Path) -> None:
        self.storage = FilesystemBlobStorage(root)
        self.stored: dict[str, StoredChunk] = {}

    def add(self, data: bytes) -> str:
        checksum = sha1(data)
        path = f"aa/bbbb/{checksum[:26]}"
        self.storage.put(path, data)
        self.stored[checksum] = StoredChunk(path, len(data))
        return checksum

    def locate(self, organization_id: int, checksums: Sequence[str]) -> dict[str, StoredChunk]:
        return {c: self.stored[c] for c in checksums if c in self.stored}


@pytest.fixture
def blobs(tmp_path: Path) -> Iterator[Blobs]:
    blobs = Blobs(tmp_path / "blobs")
    yield blobs
    blobs.storage.close()


@pytest.fixture
def scratch(tmp_path: Path) -> ScratchDirectory:
    (tmp_path / "scratch").mkdir()
    return ScratchDirectory(tmp_path / "scratch")


KINDS: list[AssembleKind] = ["dif", "artifact_bundle"]


def task(checksum: str, chunks: Sequence[str], kind: AssembleKind = "dif") -> AssembleTask:
    return AssembleTask(
        id=1, organization_id=2, project_id=None, kind=kind, checksum=checksum,
        name="file", chunks=tuple(chunks), debug_id=None, projects=(), release=None,
        dist=None, attempts=1,
    )  # fmt: skip


def test_chunks_in_order_and_repeated_make_the_debug_file_in_a_scratch_file(
    blobs: Blobs, scratch: ScratchDirectory
) -> None:
    first, second = os.urandom(1000), os.urandom(2000)
    chunks = [blobs.add(first), blobs.add(second), blobs.add(first)]
    whole = first + second + first
    read: list[int] = []
    assembled = ChunkAssembler(blobs.locate, blobs.storage, scratch, on_read=read.append)(
        task(sha1(whole), chunks)
    )
    assert isinstance(assembled, AssembledBytes)
    assert assembled.path is not None
    assert assembled.path.parent == scratch.directory
    assert assembled.path.read_bytes() == whole
    assert assembled.size == len(whole)
    assert assembled.chunks == tuple(blobs.stored[c] for c in chunks)
    assert read == [1000, 2000, 1000]


def test_a_bundle_is_read_and_hashed_without_writing_anything(
    blobs: Blobs, scratch: ScratchDirectory
) -> None:
    first, second = os.urandom(1000), os.urandom(2000)
    chunks = [blobs.add(first), blobs.add(second), blobs.add(first)]
    whole = first + second + first
    read: list[int] = []
    assembled = ChunkAssembler(blobs.locate, blobs.storage, scratch, on_read=read.append)(
        task(sha1(whole), chunks, "artifact_bundle")
    )
    assert assembled == AssembledBytes(len(whole), tuple(blobs.stored[c] for c in chunks))
    assert read == [1000, 2000, 1000]
    assert list(scratch.directory.iterdir()) == []


def test_the_chunks_carry_the_size_read_not_the_rows(
    blobs: Blobs, scratch: ScratchDirectory
) -> None:
    data = os.urandom(3000)
    checksum = blobs.add(data)
    stored = blobs.stored[checksum]
    blobs.stored[checksum] = StoredChunk(stored.path, 10)  # the row is wrong; the object is not
    assembled = ChunkAssembler(blobs.locate, blobs.storage, scratch)(
        task(sha1(data), [checksum], "artifact_bundle")
    )
    assert isinstance(assembled, AssembledBytes)
    assert assembled.chunks == (stored,)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("missing_chunk", NOT_ALL_CHUNKS),
        ("object_gone", NOT_ALL_CHUNKS),
        ("mismatch", CHECKSUM_MISMATCH),
        ("too_large", TOO_LARGE),
        ("larger_than_its_row", TOO_LARGE),
    ],
)
def test_refusals_have_upstreams_detail_and_leave_no_file(
    blobs: Blobs, scratch: ScratchDirectory, case: str, detail: str, kind: AssembleKind
) -> None:
    data = os.urandom(3000)
    chunks = [blobs.add(data)]
    claimed, limit = sha1(data), 10_000
    if case == "missing_chunk":
        chunks.append(sha1(b"absent"))
    elif case == "object_gone":
        blobs.storage.delete_many([blobs.stored[chunks[0]].path])
    elif case == "mismatch":
        claimed = sha1(b"other")
    elif case == "too_large":
        limit = 2999
    else:  # the stored object is larger than its row says: the bound holds while streaming
        blobs.stored[chunks[0]] = StoredChunk(blobs.stored[chunks[0]].path, 10)
        limit = 2999
    outcome = ChunkAssembler(blobs.locate, blobs.storage, scratch, limit)(
        task(claimed, chunks, kind)
    )
    assert outcome == Refused(detail)
    assert list(scratch.directory.iterdir()) == []


@pytest.mark.parametrize("kind", KINDS)
def test_a_storage_failure_is_raised_and_leaves_no_file(
    blobs: Blobs, scratch: ScratchDirectory, monkeypatch: pytest.MonkeyPatch, kind: AssembleKind
) -> None:
    first, second = os.urandom(100), os.urandom(100)
    chunks = [blobs.add(first), blobs.add(second)]
    failing = blobs.stored[chunks[1]].path
    real_get = blobs.storage.get

    def get(path: str) -> bytes:
        if path == failing:
            raise StorageError("get", path, "connection reset")
        return real_get(path)

    monkeypatch.setattr(blobs.storage, "get", get)
    with pytest.raises(StorageError, match="connection reset"):
        ChunkAssembler(blobs.locate, blobs.storage, scratch)(
            task(sha1(first + second), chunks, kind)
        )
    assert list(scratch.directory.iterdir()) == []


def test_leftovers_of_dead_processes_and_of_our_pid_are_removed(scratch: ScratchDirectory) -> None:
    directory = scratch.directory
    ours = scratch.new_path()
    ours.write_bytes(b"x")
    dead = directory / "workers-assemble-999999999-abc"
    dead.write_bytes(b"x")
    alive = directory / "workers-assemble-1-abc"  # pid 1 always runs
    alive.write_bytes(b"x")
    unrelated = directory / "something-else"
    unrelated.write_bytes(b"x")
    assert scratch.remove_leftovers() == 2
    assert sorted(p.name for p in directory.iterdir()) == sorted([alive.name, unrelated.name])


def test_a_write_that_fails_is_raised_by_the_scratch_writer() -> None:
    full = Path("/dev/full")  # Linux's device on which every write fails with ENOSPC

    def write_three_chunks() -> None:
        with ScratchWriter(full, in_flight=1) as out:
            for _ in range(3):
                out.write(os.urandom(64 * 1024))

    with pytest.raises(OSError, match="No space left"):
        write_three_chunks()

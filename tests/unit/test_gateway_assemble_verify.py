"""Assemble within bounds, without the stack: each distinct chunk read once per request, each
distinct chunk list hashed once, the verified bytes capped (docs/gateway.md, Bounded
assemble). Storage, rows and pending chunks are fakes that count what is asked of them."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
from collections import Counter
from collections.abc import Iterator, Sequence

import pytest

from workers.common.storage import BlobStorage, StoredObject
from workers.gateway.assemble import (
    AssembledFile,
    AssembleLimits,
    Assembler,
    AssembleResult,
    FileRequest,
    Target,
)
from workers.gateway.verify import (
    MIN_CHUNK_COST,
    ChunkReader,
    Verified,
    VerifyPlan,
    chunk_list_cost,
    verify_chunk_lists,
)

MIB = 1024 * 1024
TARGET = Target(organization_id=7, kind="dif", project_id=70)


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class CountingStorage(BlobStorage):
    """Objects in a dict; `gets` counts the reads of each path."""

    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[str, bytes] = {}
        self.gets: Counter[str] = Counter()

    def _do_put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        self.objects.update(items)

    def _do_get(self, path: str) -> bytes:
        self.gets[path] += 1
        return self.objects[path]

    def _do_exists(self, path: str) -> bool:
        return path in self.objects

    def _do_delete_many(self, paths: Sequence[str]) -> None:
        for path in paths:
            self.objects.pop(path, None)

    def _do_iter_objects(self, prefix: str) -> Iterator[StoredObject]:
        return iter(())

    def _do_check(self) -> None:
        pass

    def _do_close(self) -> None:
        pass

    @property
    def reads(self) -> int:
        return sum(self.gets.values())


class Chunks:
    """Chunks stored as blobs of the organization: their paths, sizes and bytes."""

    def __init__(self, storage: CountingStorage) -> None:
        self.storage = storage
        self.paths: dict[str, str] = {}
        self.sizes: dict[str, int] = {}
        self.data: dict[str, bytes] = {}

    def add(self, data: bytes) -> str:
        checksum = sha1(data)
        path = f"{checksum[:2]}/{checksum[2:6]}/{checksum[6:32]}"
        self.storage.put(path, data)
        self.paths[checksum] = path
        self.sizes[checksum] = len(data)
        self.data[checksum] = data
        return checksum

    def file(
        self, chunks: Sequence[str], name: str = "f", claimed: str | None = None
    ) -> FileRequest:
        whole = sha1(b"".join(self.data[c] for c in chunks))
        return FileRequest(claimed or whole, name, tuple(chunks))


class FakeStore:
    def __init__(self, chunks: Chunks) -> None:
        self.chunks = chunks
        self.rows: dict[str, AssembledFile] = {}
        self.lookups: list[int] = []
        self.path_lookups: list[int] = []

    async def assembled(self, target: Target, checksums: Sequence[str]) -> dict[str, AssembledFile]:
        return {c: self.rows[c] for c in checksums if c in self.rows}

    async def owned_sizes(self, organization_id: int, checksums: Sequence[str]) -> dict[str, int]:
        self.lookups.append(len(checksums))
        assert len(set(checksums)) == len(checksums), "each checksum is looked up once"
        return {c: self.chunks.sizes[c] for c in checksums if c in self.chunks.sizes}

    async def paths(self, organization_id: int, checksums: Sequence[str]) -> dict[str, str]:
        self.path_lookups.append(len(checksums))
        return {c: self.chunks.paths[c] for c in checksums if c in self.chunks.paths}

    async def record(
        self, target: Target, request: FileRequest, verified: Verified
    ) -> AssembledFile:
        row = AssembledFile(
            len(self.rows) + 1, request.name, request.checksum, verified.size, None, None
        )
        self.rows[request.checksum] = row
        return row


class FakePending:
    def __init__(self, pending: set[str] | None = None) -> None:
        self.pending = pending or set()

    async def which(self, organization_id: int, checksums: Sequence[str]) -> set[str]:
        return {c for c in checksums if c in self.pending}


@pytest.fixture
def storage() -> CountingStorage:
    return CountingStorage()


@pytest.fixture
def chunks(storage: CountingStorage) -> Chunks:
    return Chunks(storage)


def _assembler(
    chunks: Chunks, limits: AssembleLimits | None = None, pending: set[str] | None = None
) -> tuple[Assembler, FakeStore]:
    store = FakeStore(chunks)
    return Assembler(store, FakePending(pending), chunks.storage, limits), store


def _detail(result: AssembleResult) -> str:
    assert result.detail is not None
    return result.detail


def _run(assembler: Assembler, files: Sequence[FileRequest]) -> list[AssembleResult]:
    return asyncio.run(assembler.assemble_many(TARGET, files))


# ---- the reader: each chunk read once --------------------------------------------------------


def test_a_chunk_listed_1000_times_is_read_once(chunks: Chunks) -> None:
    x = chunks.add(os.urandom(1000))
    order = [x] * 1000
    reader = ChunkReader(chunks.storage, chunks.paths, order, cache_bytes=2000)
    assert b"".join(reader) == chunks.data[x] * 1000
    assert (reader.reads, chunks.storage.reads) == (1, 1)


def test_the_reader_drops_the_chunk_needed_furthest_ahead(chunks: Chunks) -> None:
    a, b, c = (chunks.add(os.urandom(100)) for _ in range(3))
    # Room for two. When `c` comes, `b` is needed furthest ahead: it is dropped, `a` and `c`
    # stay (dropping the least recently used, `a`, would cost one read more).
    order = [a, b, c, a, c, b]
    reader = ChunkReader(chunks.storage, chunks.paths, order, cache_bytes=200)
    assert list(reader) == [chunks.data[checksum] for checksum in order]
    names = {a: "a", b: "b", c: "c"}
    paths = {chunks.paths[checksum]: name for checksum, name in names.items()}
    assert {paths[path]: count for path, count in chunks.storage.gets.items()} == {
        "a": 1,
        "b": 2,
        "c": 1,
    }


def test_a_cache_too_small_for_a_chunk_reads_it_each_time(chunks: Chunks) -> None:
    x = chunks.add(os.urandom(1000))
    reader = ChunkReader(chunks.storage, chunks.paths, [x] * 5, cache_bytes=999)
    assert len(list(reader)) == 5
    assert reader.reads == 5


def test_the_cache_never_holds_more_than_its_size(chunks: Chunks) -> None:
    ids = [chunks.add(os.urandom(100 + i)) for i in range(20)]
    order = [ids[(i * 7) % 20] for i in range(400)]
    reader = ChunkReader(chunks.storage, chunks.paths, order, cache_bytes=550)
    for expected, data in zip(order, reader, strict=True):
        assert data == chunks.data[expected]
        held = reader.held_bytes
        assert held <= 550
    assert 20 <= reader.reads < 400


def test_identical_chunk_lists_are_hashed_once(chunks: Chunks) -> None:
    x, y = chunks.add(b"x" * 300), chunks.add(b"y" * 200)
    lists = [(x, y, x), (y,), (x, y, x)]
    plan = VerifyPlan(10**9)
    for chunk_list in lists:
        assert plan.admit(chunk_list, chunk_list_cost(chunk_list, chunks.sizes))
    assert plan.lists == [(x, y, x), (y,)]
    verification = verify_chunk_lists(chunks.storage, chunks.paths, plan.lists)
    assert verification.results[(x, y, x)] == Verified(
        sha1(b"x" * 300 + b"y" * 200 + b"x" * 300), 800, None
    )
    assert verification.results[(y,)].checksum == sha1(b"y" * 200)
    assert (verification.reads, verification.read_bytes, verification.hashed_bytes) == (
        2,
        500,
        1000,
    )


def test_the_plan_counts_each_chunk_at_least_one_mib() -> None:
    sizes = {"a": 10, "b": 3 * MIB}
    assert chunk_list_cost(("a", "b", "a"), sizes) == 2 * MIN_CHUNK_COST + 3 * MIB
    plan = VerifyPlan(4 * MIB)
    assert plan.admit(("b",), 3 * MIB)
    assert not plan.admit(("a", "a"), 2 * MIB)
    assert plan.admit(("a",), MIB)
    assert plan.admit(("b",), 3 * MIB)  # already admitted: free
    assert plan.spent == 4 * MIB


# ---- the assembler: one request --------------------------------------------------------------


def test_1000_files_listing_the_same_chunks_read_each_chunk_once(chunks: Chunks) -> None:
    x, y = chunks.add(os.urandom(5000)), chunks.add(os.urandom(7000))
    assembler, store = _assembler(chunks)
    files = [
        chunks.file([x, y] * 4 if i % 2 else [y, x, x], name=f"f{i}", claimed=f"{i:040x}")
        for i in range(998)
    ]
    files += [chunks.file([x, y] * 4, name="good"), chunks.file([y, x, x], name="also good")]
    results = _run(assembler, files)
    assert chunks.storage.gets == Counter({chunks.paths[x]: 1, chunks.paths[y]: 1})
    assert (store.lookups, store.path_lookups) == ([2], [2])
    assert [r.state for r in results[-2:]] == ["ok", "ok"]
    assert {r.state for r in results[:-2]} == {"error"}
    assert _detail(results[0]).startswith("checksum mismatch")
    assert store.rows[files[-2].checksum].size == 4 * 12000


def test_states_come_back_in_the_request_order(chunks: Chunks) -> None:
    present = chunks.add(b"present")
    on_the_way, missing = sha1(b"on the way"), sha1(b"missing")
    assembler, store = _assembler(chunks, pending={on_the_way})
    done = chunks.file([present], name="done")
    store.rows[done.checksum] = AssembledFile(99, "done", done.checksum, 7, None, None)
    files = [
        FileRequest("1" * 40, "lost", (present, missing, on_the_way, missing)),
        FileRequest("2" * 40, "coming", (present, on_the_way)),
        done,
        FileRequest("3" * 40, "empty", ()),
        chunks.file([present, present], name="new"),
    ]
    results = _run(assembler, files)
    assert [(r.state, r.missing_chunks) for r in results] == [
        ("not_found", (missing,)),
        ("created", ()),
        ("ok", ()),
        ("not_found", ()),
        ("ok", ()),
    ]
    assert results[2].file is not None
    assert results[2].file.id == 99
    assert chunks.storage.reads == 1


def test_files_beyond_the_verified_bytes_are_refused_unread(chunks: Chunks) -> None:
    big = [chunks.add(os.urandom(MIB)) for _ in range(6)]
    assembler, _ = _assembler(chunks, AssembleLimits(max_verify_bytes=4 * MIB))
    files = [
        chunks.file(big[0:2], name="first"),  # 2 MiB
        chunks.file(big[2:5], name="too much now"),  # 3 MiB: 5 in all
        chunks.file(big[0:2] * 3, name="too large", claimed="4" * 40),  # 6 MiB alone
        chunks.file(big[5:6], name="still fits"),  # 1 MiB: 3 in all
        chunks.file(big[0:2], name="same as first", claimed="5" * 40),  # free: hashed already
        chunks.file(big[4:5], name="fits exactly"),  # 1 MiB: 4 in all
    ]
    results = _run(assembler, files)
    assert [r.state for r in results] == ["ok", "error", "error", "ok", "error", "ok"]
    assert "send it again" in _detail(results[1])
    assert _detail(results[2]).startswith("file too large")
    assert _detail(results[4]).startswith("checksum mismatch")
    read = {path for path, count in chunks.storage.gets.items() if count}
    assert read == {chunks.paths[c] for c in (big[0], big[1], big[5], big[4])}
    assert sum(chunks.storage.gets.values()) == 4
    # Sent again, the assembled files are not verified again: the second file fits now.
    chunks.storage.gets.clear()
    again = _run(assembler, files)
    assert [r.state for r in again] == ["ok", "ok", "error", "ok", "error", "ok"]
    assert _detail(again[4]).startswith("not verified")
    assert chunks.storage.reads == 3


def test_the_worst_request_hashes_at_most_the_budget(chunks: Chunks) -> None:
    """1,000 files of the same two chunks, in lists of 1 to 512: without the budget, 131,000
    chunks would be read and hashed."""
    x, y = chunks.add(os.urandom(64 * 1024)), chunks.add(os.urandom(64 * 1024))
    assembler, _ = _assembler(chunks, AssembleLimits(max_verify_bytes=600 * MIB))
    pattern = itertools.cycle([x, y, y])
    lists = [tuple(itertools.islice(pattern, 0, length)) for length in range(1, 513)]
    files = [FileRequest(f"{i:040x}", f"f{i}", lists[i % 512]) for i in range(1000)]
    results = _run(assembler, files)
    # Each chunk counts 1 MiB: lists of 1 to 34 chunks (595 MiB) fit, and their repeats.
    verified = [i for i, r in enumerate(results) if _detail(r).startswith("checksum mismatch")]
    assert verified == [*range(34), *range(512, 512 + 34)]
    refused = {_detail(r) for i, r in enumerate(results) if i not in verified}
    assert len(refused) == 1
    assert refused.pop().startswith("not verified")
    assert chunks.storage.reads == 2

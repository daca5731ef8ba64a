"""The behaviour every `BlobStorage` backend shares, run here against the filesystem backend.

`StorageContract` holds the tests; a backend's test class inherits it and provides a
`storage` fixture (an empty storage). `tests/integration/test_storage_s3.py` runs the same
tests against a real S3-compatible server.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from workers.common.storage import (
    BlobNotFoundError,
    BlobStorage,
    FilesystemBlobStorage,
    InvalidBlobPath,
    StorageClosedError,
    StorageError,
    random_blob_path,
    random_blob_paths,
)

# Timestamps of some servers have whole-second precision.
CLOCK_SLACK = timedelta(seconds=2)


def listing(storage: BlobStorage, prefix: str = "") -> dict[str, int]:
    return {stored.path: stored.size for stored in storage.iter_objects(prefix)}


class StorageContract:
    """Tests for any backend; subclasses define the `storage` fixture."""

    def test_put_get_round_trip(self, storage: BlobStorage) -> None:
        path = random_blob_path()
        data = os.urandom(100_003)
        storage.put(path, data)
        assert storage.get(path) == data
        assert storage.exists(path)

    def test_put_many_writes_every_object(self, storage: BlobStorage) -> None:
        items = [(random_blob_path(), os.urandom(n)) for n in (0, 1, 4096, 65_537)]
        storage.put_many(items)
        for path, data in items:
            assert storage.get(path) == data
        assert listing(storage) == {path: len(data) for path, data in items}

    def test_put_new_many_writes_every_object(self, storage: BlobStorage) -> None:
        items = [
            (path, os.urandom(n))
            for path, n in zip(random_blob_paths(4), (1, 7, 4096, 65_537), strict=True)
        ]
        storage.put_new_many(items)
        for path, data in items:
            assert storage.get(path) == data
        assert listing(storage) == {path: len(data) for path, data in items}

    def test_put_replaces_an_existing_object(self, storage: BlobStorage) -> None:
        path = random_blob_path()
        storage.put(path, b"first version")
        storage.put(path, b"second")
        assert storage.get(path) == b"second"
        assert listing(storage) == {path: len(b"second")}

    def test_empty_batch_is_a_no_op(self, storage: BlobStorage) -> None:
        storage.put_many([])
        assert listing(storage) == {}

    def test_accepts_bytes_like_data(self, storage: BlobStorage) -> None:
        path = random_blob_path()
        storage.put_many([(path, memoryview(b"viewed"))])  # type: ignore[list-item]
        assert storage.get(path) == b"viewed"

    def test_get_of_a_missing_object_is_blob_not_found(self, storage: BlobStorage) -> None:
        path = random_blob_path()
        with pytest.raises(BlobNotFoundError) as raised:
            storage.get(path)
        assert isinstance(raised.value, StorageError)
        assert raised.value.path == path
        assert path in str(raised.value)
        assert "get" in str(raised.value)

    def test_exists_is_false_for_missing_objects_and_prefixes(self, storage: BlobStorage) -> None:
        storage.put("ab/cdef/object", b"x")
        assert storage.exists("ab/cdef/object")
        assert not storage.exists("ab/cdef/other")
        assert not storage.exists("ab/cdef")  # a "directory" is not an object
        assert not storage.exists("zz/zzzz/missing")

    def test_delete_many_of_existing_and_missing_objects(self, storage: BlobStorage) -> None:
        kept, deleted = random_blob_path(), [random_blob_path() for _ in range(3)]
        storage.put_many([(kept, b"kept"), *((path, b"gone") for path in deleted)])
        missing = [random_blob_path(), "zz/never/written"]
        storage.delete_many([*deleted, *missing, deleted[0]])
        for path in deleted:
            assert not storage.exists(path)
        assert listing(storage) == {kept: 4}

    def test_delete_many_of_nothing(self, storage: BlobStorage) -> None:
        storage.delete_many([])
        storage.delete_many(iter([]))

    def test_iter_objects_lists_sizes_and_utc_modification_times(
        self, storage: BlobStorage
    ) -> None:
        before = datetime.now(UTC)
        items = [(random_blob_path(), b"x" * n) for n in range(1, 6)]
        storage.put_many(items)
        after = datetime.now(UTC)
        stored = list(storage.iter_objects())
        assert sorted((o.path, o.size) for o in stored) == sorted(
            (path, len(data)) for path, data in items
        )
        for stored_object in stored:
            assert stored_object.modified.utcoffset() == timedelta(0)
            assert before - CLOCK_SLACK <= stored_object.modified <= after + CLOCK_SLACK
            age = datetime.now(UTC) - stored_object.modified
            assert timedelta(0) - CLOCK_SLACK <= age < timedelta(minutes=1)

    def test_iter_objects_filters_by_prefix(self, storage: BlobStorage) -> None:
        paths = ["ab/cdef/one", "ab/cdef/two", "ab/cdxx/three", "abc/dddd/four", "ff/0000/five"]
        storage.put_many([(path, b"1") for path in paths])
        assert set(listing(storage, "ab/")) == {"ab/cdef/one", "ab/cdef/two", "ab/cdxx/three"}
        assert set(listing(storage, "ab")) == {*paths[:4]}
        assert set(listing(storage, "ab/cd")) == {"ab/cdef/one", "ab/cdef/two", "ab/cdxx/three"}
        assert set(listing(storage, "ab/cdef/")) == {"ab/cdef/one", "ab/cdef/two"}
        assert set(listing(storage, "ab/cdef/t")) == {"ab/cdef/two"}
        assert set(listing(storage, "ab/cdef/one")) == {"ab/cdef/one"}
        assert listing(storage, "cc/") == {}
        assert set(listing(storage)) == set(paths)

    def test_invalid_paths_are_rejected_by_every_operation(self, storage: BlobStorage) -> None:
        for bad in ("", "/ab/cdef/x", "ab/../x", "ab//x", "ab\\x", "ab/x/", "./ab"):
            with pytest.raises(InvalidBlobPath):
                storage.put(bad, b"data")
            with pytest.raises(InvalidBlobPath):
                storage.put_many([(random_blob_path(), b"ok"), (bad, b"data")])
            with pytest.raises(InvalidBlobPath):
                storage.get(bad)
            with pytest.raises(InvalidBlobPath):
                storage.exists(bad)
            with pytest.raises(InvalidBlobPath):
                storage.delete_many([bad])
        with pytest.raises(InvalidBlobPath):
            list(storage.iter_objects("../"))
        # A rejected batch writes nothing, not even its valid objects.
        assert listing(storage) == {}

    def test_a_path_twice_in_one_batch_is_rejected(self, storage: BlobStorage) -> None:
        path = random_blob_path()
        with pytest.raises(InvalidBlobPath, match="twice"):
            storage.put_many([(path, b"a"), (path, b"b")])
        assert not storage.exists(path)

    def test_concurrent_put_many_from_threads(self, storage: BlobStorage) -> None:
        threads, per_batch, batches = 8, 8, 3
        barrier = threading.Barrier(threads)

        def writer(thread: int) -> list[tuple[str, bytes]]:
            written: list[tuple[str, bytes]] = []
            barrier.wait(timeout=30)
            for batch in range(batches):
                items = [
                    # Threads share directories, so they race creating them.
                    (f"s{index % 2}/d{batch}/{random_blob_path().replace('/', '')}", data)
                    for index in range(per_batch)
                    for data in [f"{thread}:{batch}:{index}".encode() * 100]
                ]
                storage.put_many(items)
                written.extend(items)
            return written

        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(writer, range(threads)))
        written = dict(item for result in results for item in result)
        assert len(written) == threads * per_batch * batches
        assert listing(storage) == {path: len(data) for path, data in written.items()}
        for path, data in written.items():
            assert storage.get(path) == data

    def test_check_passes_on_a_working_storage(self, storage: BlobStorage) -> None:
        storage.check()

    def test_closed_storage_refuses_every_operation(self, storage: BlobStorage) -> None:
        path = random_blob_path()
        storage.put(path, b"x")
        storage.close()
        storage.close()  # idempotent
        assert storage.closed
        for call in (
            lambda: storage.put(path, b"x"),
            lambda: storage.get(path),
            lambda: storage.exists(path),
            lambda: storage.delete_many([path]),
            lambda: storage.iter_objects(),
            storage.check,
        ):
            with pytest.raises(StorageClosedError):
                call()


class TestFilesystemStorageContract(StorageContract):
    @pytest.fixture(params=["file", "filesystem"])
    def storage(self, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[BlobStorage]:
        with FilesystemBlobStorage(tmp_path / "blobs", sync=request.param) as storage:
            yield storage

"""The S3 backend against a real S3-compatible server (moto's server mode on 127.0.0.1).

`TestS3StorageContract` runs every shared storage test (`tests/unit/test_storage_contract.py`)
against S3; the rest covers what only S3 has: key prefixes, batching of deletes, errors the
server answers, and a server that goes away.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.s3_server import LocalS3Server
from tests.unit.test_storage_contract import StorageContract, listing
from workers.common.storage import (
    BlobStorage,
    S3BlobStorage,
    StorageError,
    open_storage,
    random_blob_path,
)
from workers.common.storage import s3 as s3_module

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3_server() -> Iterator[LocalS3Server]:
    with LocalS3Server() as server:
        yield server


@pytest.fixture
def bucket(s3_server: LocalS3Server) -> str:
    return s3_server.create_bucket()


class TestS3StorageContract(StorageContract):
    @pytest.fixture
    def storage(self, s3_server: LocalS3Server, bucket: str) -> Iterator[BlobStorage]:
        with S3BlobStorage(bucket, prefix="fleet", options=s3_server.options()) as storage:
            yield storage


def test_keys_carry_the_prefix_and_prefixes_are_isolated(
    s3_server: LocalS3Server, bucket: str
) -> None:
    options = s3_server.options()
    with (
        S3BlobStorage(bucket, prefix="tenant-a", options=options) as a,
        S3BlobStorage(bucket, prefix="tenant-b/", options=options) as b,
        S3BlobStorage(bucket, options=options) as whole_bucket,
    ):
        path = random_blob_path()
        a.put(path, b"from a")
        b.put_many([(path, b"from b"), ("ab/cdef/only-b", b"b")])

        assert a.get(path) == b"from a"
        assert b.get(path) == b"from b"
        assert listing(a) == {path: 6}
        assert listing(b) == {path: 6, "ab/cdef/only-b": 1}
        assert not a.exists("ab/cdef/only-b")
        assert listing(whole_bucket) == {
            f"tenant-a/{path}": 6,
            f"tenant-b/{path}": 6,
            "tenant-b/ab/cdef/only-b": 1,
        }

        a.delete_many([path, "ab/cdef/only-b"])  # the second is b's: untouched
        assert listing(a) == {}
        assert b.get("ab/cdef/only-b") == b"b"
        assert b.get(path) == b"from b"

    listed = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    keys = {item["Key"] for item in listed}
    assert keys == {f"tenant-b/{path}", "tenant-b/ab/cdef/only-b"}


def test_iter_objects_skips_keys_that_are_not_blob_paths(
    s3_server: LocalS3Server, bucket: str
) -> None:
    for key in ("p/ab/cdef/good", "p/folder-marker/", "p/a//b", "p/.hidden", "other"):
        s3_server.client().put_object(Bucket=bucket, Key=key, Body=b"x")
    with S3BlobStorage(bucket, prefix="p", options=s3_server.options()) as storage:
        assert listing(storage) == {"ab/cdef/good": 1}


def test_a_large_parallel_batch(s3_server: LocalS3Server, bucket: str) -> None:
    items = [(random_blob_path(), os.urandom(64 * 1024)) for _ in range(64)]
    with S3BlobStorage(bucket, options=s3_server.options(max_concurrency=8)) as storage:
        storage.put_many(items)
        assert listing(storage) == {path: len(data) for path, data in items}
        assert all(storage.get(path) == data for path, data in items[::7])


def test_an_8_mib_chunk_round_trips(s3_server: LocalS3Server, bucket: str) -> None:
    data = os.urandom(8 * 1024 * 1024)
    path = random_blob_path()
    with S3BlobStorage(bucket, options=s3_server.options()) as storage:
        storage.put(path, data)
        assert storage.get(path) == data


def test_delete_many_is_sent_in_batches(
    s3_server: LocalS3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "DELETE_BATCH_SIZE", 3)
    paths = [random_blob_path() for _ in range(8)]
    with S3BlobStorage(bucket, options=s3_server.options()) as storage:
        storage.put_many([(path, b"x") for path in paths[:7]])  # the last one never existed
        storage.delete_many(paths)
        assert listing(storage) == {}


def test_a_missing_bucket_is_a_storage_error(s3_server: LocalS3Server) -> None:
    with S3BlobStorage("no-such-bucket-here", options=s3_server.options()) as storage:
        with pytest.raises(StorageError, match="NoSuchBucket"):
            storage.put(random_blob_path(), b"x")
        with pytest.raises(StorageError, match="storage check 'no-such-bucket-here'"):
            storage.check()
        with pytest.raises(StorageError, match="storage iter_objects"):
            list(storage.iter_objects())


def test_open_storage_with_an_s3_url(s3_server: LocalS3Server, bucket: str) -> None:
    with open_storage(f"s3://{bucket}/via-url", s3_options=s3_server.options()) as storage:
        storage.check()
        path = random_blob_path()
        storage.put(path, b"through the url")
        assert storage.get(path) == b"through the url"
    head = s3_server.client().head_object(Bucket=bucket, Key=f"via-url/{path}")
    assert head["ContentLength"] == len(b"through the url")


def test_a_stopped_server_gives_storage_errors() -> None:
    """Every operation fails with a StorageError naming it, promptly, once the server is gone."""
    server = LocalS3Server()
    server.start()
    try:
        bucket = server.create_bucket()
        options = server.options(max_attempts=2, connect_timeout_seconds=2, read_timeout_seconds=5)
        storage = S3BlobStorage(bucket, options=options)
        path = random_blob_path()
        storage.put(path, b"written before the stop")
        assert storage.get(path) == b"written before the stop"
    finally:
        server.stop()

    with storage:
        for operation, call in (
            ("put_many", lambda: storage.put(random_blob_path(), b"x")),
            ("put_many", lambda: storage.put_many([(random_blob_path(), b"y") for _ in "ab"])),
            ("get", lambda: storage.get(path)),
            ("exists", lambda: storage.exists(path)),
            ("delete_many", lambda: storage.delete_many([path])),
            ("iter_objects", lambda: list(storage.iter_objects())),
            ("check", storage.check),
        ):
            with pytest.raises(StorageError, match="EndpointConnectionError") as raised:
                call()
            assert raised.value.operation == operation

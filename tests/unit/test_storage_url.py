"""Blob storage URLs, S3 options, and the S3 backend's errors without a server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from workers.common.net import free_port
from workers.common.storage import (
    FileLocation,
    FilesystemBlobStorage,
    S3BlobStorage,
    S3Location,
    S3Options,
    StorageError,
    StorageUrlError,
    default_storage_url,
    open_storage,
    parse_addressing_style,
    parse_storage_url,
    random_blob_path,
)


def test_file_url() -> None:
    assert parse_storage_url("file:///var/lib/blobs") == FileLocation(Path("/var/lib/blobs"))
    assert parse_storage_url("file://localhost/var/blobs") == FileLocation(Path("/var/blobs"))
    assert parse_storage_url("file:///with%20space") == FileLocation(Path("/with space"))


def test_default_url_is_blobs_under_the_state_dir(tmp_path: Path) -> None:
    url = default_storage_url(tmp_path / "state dir")
    assert url.startswith("file:///")
    assert parse_storage_url(url) == FileLocation(tmp_path / "state dir" / "blobs")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file://host/var/blobs", "no host"),
        ("file:relative/blobs", "absolute"),
        ("file:///var/../etc", "'..'"),
        ("file:///var/blobs?x=1", "query"),
        ("file:///var/blobs#x", "fragment"),
        ("", "no scheme"),
        ("/var/blobs", "no scheme"),
        ("gs://bucket", "scheme 'gs'"),
        ("http://127.0.0.1:9000/bucket", "scheme 'http'"),
        ("s3://", "invalid S3 bucket name"),
        ("s3://Upper", "invalid S3 bucket name"),
        ("s3://bucket:9000/x", "no port"),
        ("s3://bucket//double", "bad key prefix"),
        ("s3://bucket/../up", "bad key prefix"),
        ("s3://[bad", "malformed"),
    ],
)
def test_unusable_urls_are_clear_value_errors(url: str, message: str) -> None:
    with pytest.raises(StorageUrlError, match=message.replace("?", r"\?")) as raised:
        parse_storage_url(url)
    assert isinstance(raised.value, ValueError)


def test_credentials_in_an_s3_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(StorageUrlError, match="credentials") as raised:
        parse_storage_url("s3://AKIAEXAMPLE:very-secret@bucket/prefix")
    assert "very-secret" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://blobs", "blobs", ""),
        ("s3://blobs/", "blobs", ""),
        ("s3://my-bucket.example/fleet", "my-bucket.example", "fleet/"),
        ("s3://blobs/fleet/production/", "blobs", "fleet/production/"),
    ],
)
def test_s3_urls(url: str, bucket: str, prefix: str) -> None:
    assert parse_storage_url(url) == S3Location(bucket=bucket, prefix=prefix)


def test_scheme_is_case_insensitive() -> None:
    assert parse_storage_url("S3://blobs/p") == S3Location("blobs", "p/")


def test_open_storage_chooses_the_backend(tmp_path: Path) -> None:
    with open_storage((tmp_path / "blobs").as_uri()) as storage:
        assert isinstance(storage, FilesystemBlobStorage)
        assert storage.root == tmp_path / "blobs"
    options = S3Options(endpoint_url="http://127.0.0.1:1", region="us-east-1")
    with open_storage("s3://blobs/fleet", s3_options=options) as storage:
        assert isinstance(storage, S3BlobStorage)
        assert (storage.bucket, storage.prefix) == ("blobs", "fleet/")
    with pytest.raises(StorageUrlError):
        open_storage("ftp://example/blobs")


def test_s3_options_validation() -> None:
    with pytest.raises(ValueError, match="together"):
        S3Options(access_key_id="key")
    with pytest.raises(ValueError, match="addressing style"):
        S3Options(addressing_style="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_concurrency"):
        S3Options(max_concurrency=0)
    with pytest.raises(ValueError, match="max_attempts"):
        S3Options(max_attempts=0)
    with pytest.raises(ValueError, match="timeouts"):
        S3Options(read_timeout_seconds=0)
    assert S3Options(max_concurrency=8).max_pool_connections >= 8


def test_parse_addressing_style() -> None:
    assert [parse_addressing_style(s) for s in ("auto", "path", "virtual")] == [
        "auto",
        "path",
        "virtual",
    ]
    with pytest.raises(ValueError, match="auto, path, virtual"):
        parse_addressing_style("Path")


def test_s3_options_never_show_credentials() -> None:
    options = S3Options(access_key_id="AKIAEXAMPLE", secret_access_key="very-secret")
    assert "very-secret" not in repr(options)
    assert "AKIAEXAMPLE" not in repr(options)


def test_unreachable_s3_server_is_a_prompt_storage_error() -> None:
    """Nothing listens on the endpoint: every operation raises StorageError, not a crash."""
    options = S3Options(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        access_key_id="key",
        secret_access_key="secret",
        addressing_style="path",
        max_attempts=2,
        connect_timeout_seconds=2,
    )
    path = random_blob_path()
    started = time.monotonic()
    with S3BlobStorage("blobs", options=options) as storage:
        with pytest.raises(StorageError) as raised:
            storage.put_many([(path, b"payload-secret"), (random_blob_path(), b"x")])
        assert raised.value.operation == "put_many"
        assert "payload-secret" not in str(raised.value)
        for operation, call in (
            ("put_many", lambda: storage.put(path, b"x")),
            ("get", lambda: storage.get(path)),
            ("exists", lambda: storage.exists(path)),
            ("delete_many", lambda: storage.delete_many([path])),
            ("iter_objects", lambda: list(storage.iter_objects())),
            ("check", storage.check),
        ):
            with pytest.raises(StorageError, match=f"storage {operation}"):
                call()
    assert time.monotonic() - started < 60

"""Blob storage in an S3 bucket (AWS S3 or any S3-compatible server) through boto3.

One boto3 client per instance (boto3 clients are thread-safe) and one bounded thread pool
that PUTs the objects of a `put_many` batch in parallel; the connection pool is sized for
that pool plus callers' own concurrent requests. A key is `<prefix><path>`, where the prefix
comes from the URL (`s3://bucket/some/prefix` → `some/prefix/`), so several deployments can
share a bucket without seeing each other's objects.

Credentials come from `S3Options` when given, otherwise from boto3's default chain
(environment, shared config, instance or pod role). They are never logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC
from typing import TYPE_CHECKING, Final, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from workers.common.settings import redact_url
from workers.common.storage.base import (
    BlobNotFoundError,
    BlobStorage,
    StorageError,
    StoredObject,
    is_blob_path,
    validate_prefix,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

logger = logging.getLogger(__name__)

AddressingStyle = Literal["auto", "path", "virtual"]
ADDRESSING_STYLES: Final = ("auto", "path", "virtual")

#: Keys per DeleteObjects request (S3's limit).
DELETE_BATCH_SIZE: Final = 1000
_NOT_FOUND_CODES: Final = frozenset({"404", "NoSuchKey", "NotFound"})
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")


@dataclass(frozen=True, slots=True)
class S3Options:
    """How to reach the S3 server; everything but the bucket and key prefix."""

    #: `http://127.0.0.1:9000` for an S3-compatible server; `None` = AWS.
    endpoint_url: str | None = None
    region: str | None = None
    #: Both or neither; neither = boto3's default credential chain.
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    #: `path` for most self-hosted servers (MinIO, Ceph, moto), `auto` for AWS.
    addressing_style: AddressingStyle = "auto"
    #: Parallel PUTs per `put_many` (threads of the instance's pool).
    max_concurrency: int = 8
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 30.0
    #: Attempts per request, the first included (boto3 "standard" retry mode, with backoff).
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("S3 access key id and secret access key must be given together")
        if self.addressing_style not in ADDRESSING_STYLES:
            raise ValueError(
                f"S3 addressing style must be one of {', '.join(ADDRESSING_STYLES)}, "
                f"got {self.addressing_style!r}"
            )
        if self.max_concurrency < 1:
            raise ValueError(f"S3 max_concurrency must be ≥ 1, got {self.max_concurrency}")
        if self.max_attempts < 1:
            raise ValueError(f"S3 max_attempts must be ≥ 1, got {self.max_attempts}")
        if self.connect_timeout_seconds <= 0 or self.read_timeout_seconds <= 0:
            raise ValueError("S3 timeouts must be positive")

    @property
    def max_pool_connections(self) -> int:
        """HTTP connections of the client: the PUT pool plus as many for other callers."""
        return 2 * self.max_concurrency


def parse_addressing_style(value: str) -> AddressingStyle:
    """`"path"` → `"path"`; a `ValueError` naming the choices for anything else."""
    if value == "auto":
        return "auto"
    if value == "path":
        return "path"
    if value == "virtual":
        return "virtual"
    raise ValueError(
        f"S3 addressing style must be one of {', '.join(ADDRESSING_STYLES)}, got {value!r}"
    )


def validate_bucket_name(bucket: str) -> str:
    if not _BUCKET_NAME.fullmatch(bucket):
        raise ValueError(
            f"invalid S3 bucket name {bucket!r}: 3-63 characters of a-z, 0-9, '.', '-', '_'"
        )
    return bucket


def normalize_key_prefix(prefix: str) -> str:
    """`some/prefix` → `some/prefix/`; `""` stays `""`. Raises `InvalidBlobPath`."""
    validate_prefix(prefix)
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def make_s3_client(options: S3Options) -> S3Client:
    """One boto3 S3 client with the options' endpoint, credentials, retries and timeouts."""
    session = boto3.session.Session(
        aws_access_key_id=options.access_key_id,
        aws_secret_access_key=options.secret_access_key,
        region_name=options.region,
    )
    config = Config(
        s3={"addressing_style": options.addressing_style},
        retries={"total_max_attempts": options.max_attempts, "mode": "standard"},
        connect_timeout=options.connect_timeout_seconds,
        read_timeout=options.read_timeout_seconds,
        max_pool_connections=options.max_pool_connections,
    )
    return session.client("s3", endpoint_url=options.endpoint_url, config=config)


def describe_client_error(error: ClientError | BotoCoreError) -> str:
    """`NoSuchBucket: The specified bucket does not exist (HTTP 404)`, or botocore's text."""
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code = details.get("Code", "unknown")
        message = details.get("Message", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        text = f"{code}: {message}" if message else code
        return f"{text} (HTTP {status})" if status else text
    return f"{type(error).__name__}: {error}"


@contextmanager
def storage_errors(operation: str, path: str | None) -> Iterator[None]:
    """Turn botocore's failures inside the block into `StorageError(operation, path)`.

    Parameter validation errors stay as they are: they are bugs in the caller, not faults
    of the storage.
    """
    try:
        yield
    except ParamValidationError:
        raise
    except (ClientError, BotoCoreError) as error:
        raise StorageError(operation, path, describe_client_error(error)) from error


def _error_code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


class S3BlobStorage(BlobStorage):
    """Objects in `bucket` under the key prefix `prefix`."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        options: S3Options | None = None,
        client: S3Client | None = None,
    ) -> None:
        super().__init__()
        self._bucket = validate_bucket_name(bucket)
        self._prefix = normalize_key_prefix(prefix)
        self._options = options or S3Options()
        self._client = client if client is not None else make_s3_client(self._options)
        self._executor = ThreadPoolExecutor(
            max_workers=self._options.max_concurrency, thread_name_prefix="s3-blob-put"
        )
        logger.info(
            "blob storage opened",
            extra={
                "backend": "s3",
                "bucket": self._bucket,
                "key_prefix": self._prefix,
                "endpoint": redact_url(self._options.endpoint_url or "aws"),
            },
        )

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def prefix(self) -> str:
        return self._prefix

    def __repr__(self) -> str:
        return f"S3BlobStorage('s3://{self._bucket}/{self._prefix}')"

    # -- BlobStorage ----------------------------------------------------------------------------

    def _do_check(self) -> None:
        with storage_errors("check", self._bucket):
            self._client.head_bucket(Bucket=self._bucket)

    def _do_put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        if len(items) == 1:
            path, data = items[0]
            self._put_one(path, data)
            return
        futures: list[Future[None]] = [
            self._executor.submit(self._put_one, path, data) for path, data in items
        ]
        _, not_done = wait(futures, return_when=FIRST_EXCEPTION)
        for future in not_done:
            future.cancel()
        wait(futures)
        failures = [
            error
            for future in futures
            if not future.cancelled() and (error := future.exception()) is not None
        ]
        if failures:
            first = failures[0]
            if isinstance(first, StorageError):
                detail = f"{first.detail} ({len(failures)} failed of {len(items)} objects)"
                raise StorageError("put_many", first.path, detail) from first
            raise first
        logger.debug(
            "blobs written",
            extra={"objects": len(items), "bytes": sum(len(data) for _, data in items)},
        )

    def _put_one(self, path: str, data: bytes) -> None:
        # botocore takes bytes, bytearray or a file, not a memoryview.
        body = data if isinstance(data, bytes | bytearray) else bytes(data)
        with storage_errors("put_many", path):
            self._client.put_object(Bucket=self._bucket, Key=self._key(path), Body=body)

    def _do_get(self, path: str) -> bytes:
        with storage_errors("get", path):
            try:
                response = self._client.get_object(Bucket=self._bucket, Key=self._key(path))
            except ClientError as error:
                if _error_code(error) in _NOT_FOUND_CODES:
                    raise BlobNotFoundError(path) from None
                raise
            body = response["Body"]
            try:
                return body.read()
            finally:
                body.close()

    def _do_exists(self, path: str) -> bool:
        with storage_errors("exists", path):
            try:
                self._client.head_object(Bucket=self._bucket, Key=self._key(path))
            except ClientError as error:
                if _error_code(error) in _NOT_FOUND_CODES:
                    return False
                raise
        return True

    def _do_delete_many(self, paths: Sequence[str]) -> None:
        for start in range(0, len(paths), DELETE_BATCH_SIZE):
            batch = paths[start : start + DELETE_BATCH_SIZE]
            objects: list[ObjectIdentifierTypeDef] = [{"Key": self._key(p)} for p in batch]
            with storage_errors("delete_many", batch[0]):
                response = self._client.delete_objects(
                    Bucket=self._bucket, Delete={"Objects": objects, "Quiet": True}
                )
            errors = [
                item
                for item in response.get("Errors", [])
                if item.get("Code") not in _NOT_FOUND_CODES
            ]
            if errors:
                first = errors[0]
                path = first.get("Key", self._prefix)[len(self._prefix) :]
                detail = f"{first.get('Code', 'unknown')}: {first.get('Message', '')}"
                if len(errors) > 1:
                    detail += f" ({len(errors)} of {len(batch)} deletes failed)"
                raise StorageError("delete_many", path, detail)

    def _do_iter_objects(self, prefix: str) -> Iterator[StoredObject]:
        paginator = self._client.get_paginator("list_objects_v2")
        skipped = 0
        with storage_errors("iter_objects", self._prefix + prefix):
            for page in paginator.paginate(Bucket=self._bucket, Prefix=self._prefix + prefix):
                for item in page.get("Contents", []):
                    path = item["Key"][len(self._prefix) :]
                    if not is_blob_path(path):
                        skipped += 1
                        continue
                    yield StoredObject(
                        path=path,
                        size=item["Size"],
                        modified=item["LastModified"].astimezone(UTC),
                    )
        if skipped:
            logger.warning(
                "keys that are not blob paths were skipped",
                extra={"bucket": self._bucket, "key_prefix": self._prefix, "keys": skipped},
            )

    def _do_close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def _key(self, path: str) -> str:
        return self._prefix + path

"""Blob storage: one small interface, a filesystem backend and an S3 backend.

    storage = open_storage(settings_url, s3_options=S3Options(endpoint_url=..., ...))
    path = random_blob_path()                       # "ab/cdef/<26 hex>" (docs/reference.md)
    storage.put_many([(path, data), ...])           # durable when it returns
    storage.get(path); storage.exists(path); storage.delete_many([path, ...])
    for stored in storage.iter_objects():           # StoredObject(path, size, modified UTC)
        ...
    storage.close()

One instance per process, shared by its threads. A storage failure raises `StorageError`
(a server fault: retry or crash, never treat it as bad input); a malformed path raises
`InvalidBlobPath` (a `ValueError`); a bad URL raises `StorageUrlError` (a `ValueError`).
"""

from workers.common.storage.base import (
    BlobNotFoundError,
    BlobStorage,
    InvalidBlobPath,
    StorageClosedError,
    StorageError,
    StoredObject,
    is_blob_path,
    random_blob_path,
    random_blob_paths,
    validate_blob_path,
    validate_prefix,
)
from workers.common.storage.configured import open_blob_storage
from workers.common.storage.filesystem import FilesystemBlobStorage
from workers.common.storage.s3 import (
    AddressingStyle,
    S3BlobStorage,
    S3Options,
    parse_addressing_style,
)
from workers.common.storage.url import (
    FileLocation,
    S3Location,
    StorageUrlError,
    default_storage_url,
    open_storage,
    parse_storage_url,
)

__all__ = [
    "AddressingStyle",
    "BlobNotFoundError",
    "BlobStorage",
    "FileLocation",
    "FilesystemBlobStorage",
    "InvalidBlobPath",
    "S3BlobStorage",
    "S3Location",
    "S3Options",
    "StorageClosedError",
    "StorageError",
    "StorageUrlError",
    "StoredObject",
    "default_storage_url",
    "is_blob_path",
    "open_blob_storage",
    "open_storage",
    "parse_addressing_style",
    "parse_storage_url",
    "random_blob_path",
    "random_blob_paths",
    "validate_blob_path",
    "validate_prefix",
]

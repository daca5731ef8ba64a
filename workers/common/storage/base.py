"""The blob storage interface, its errors and the path rules every backend shares."""

from __future__ import annotations

import os
import re
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Final, Self

#: Longest key accepted, in UTF-8 bytes (S3's limit).
MAX_PATH_BYTES: Final = 1024
#: Longest path segment, in UTF-8 bytes (a file name on common filesystems).
MAX_SEGMENT_BYTES: Final = 255
_CONTROL_CHARACTER: Final = re.compile("[\x00-\x1f\x7f]")


class StorageError(Exception):
    """The storage failed (I/O error, server error, timeout): a server fault, never bad input.

    The message names the operation and the path, never the data.
    """

    def __init__(self, operation: str, path: str | None, detail: str) -> None:
        where = f" {path!r}" if path is not None else ""
        super().__init__(f"storage {operation}{where} failed: {detail}")
        self.operation = operation
        self.path = path
        self.detail = detail


class BlobNotFoundError(StorageError):
    """`get` of a path that holds no object."""

    def __init__(self, path: str) -> None:
        super().__init__("get", path, "no such object")


class InvalidBlobPath(ValueError):
    """A path (or prefix) that breaks the key rules; a caller bug, not a storage fault."""


class StorageClosedError(RuntimeError):
    """An operation on a storage after `close()`."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    """One object as listed by `BlobStorage.iter_objects`."""

    path: str
    size: int
    #: When the object was last written, timezone-aware UTC.
    modified: datetime


def random_blob_path() -> str:
    """A fresh random key `ab/cdef/<26 hex>`: a uuid4's hex split 2/4/26
    (docs/reference.md, Blob store)."""
    digits = uuid.uuid4().hex
    return f"{digits[:2]}/{digits[2:6]}/{digits[6:]}"


def random_blob_paths(count: int) -> list[str]:
    """`count` fresh random keys in the same format that share one random directory
    `ab/cdef/`: a batch written together then costs one directory sync, not one per object.
    Names stay random (never derived from content).

    The uuid4s come from one `os.urandom` call: `uuid.uuid4()` makes one each, and every
    system call gives up the GIL, which a busy process (the consumer thread, eight storage
    threads) takes milliseconds to hand back: a thousand took up to 0.3 s of a batch's store
    (docs/benchmarks.md, Blob ingest)."""
    randomness = os.urandom(16 * (count + 1))
    uuids = [
        uuid.UUID(bytes=randomness[start : start + 16], version=4).hex
        for start in range(0, len(randomness), 16)
    ]
    directory = uuids[0]
    return [f"{directory[:2]}/{directory[2:6]}/{name[6:]}" for name in uuids[1:]]


def validate_blob_path(path: str) -> str:
    """Return `path` if it is a valid relative key, else raise `InvalidBlobPath`.

    A key is `/`-separated segments; it is rejected when it is empty, absolute, has an empty
    segment (`a//b`, a trailing `/`), a segment starting with `.` (so `.`, `..` and the
    filesystem backend's temporary files), a backslash or a control character, or when it is
    longer than 1024 bytes (a segment: 255 bytes).
    """
    if not isinstance(path, str):
        raise InvalidBlobPath(f"blob path must be a string, got {type(path).__name__}")
    if not path:
        raise InvalidBlobPath("blob path is empty")
    _check_characters(path, "blob path")
    for segment in path.split("/"):
        _check_segment(segment, path, "blob path")
    return path


def is_blob_path(path: str) -> bool:
    """Whether `path` is a valid key (see `validate_blob_path`)."""
    try:
        validate_blob_path(path)
    except InvalidBlobPath:
        return False
    return True


def validate_prefix(prefix: str) -> str:
    """Return `prefix` if it can start valid keys (`""`, `ab/`, `ab/cd`), else raise.

    The same rules as `validate_blob_path`, except that it may be empty and may end with `/`.
    """
    if not isinstance(prefix, str):
        raise InvalidBlobPath(f"prefix must be a string, got {type(prefix).__name__}")
    if not prefix:
        return prefix
    _check_characters(prefix, "prefix")
    segments = prefix.split("/")
    if segments[-1] == "":
        segments.pop()
    for segment in segments:
        _check_segment(segment, prefix, "prefix")
    return prefix


def _check_characters(path: str, what: str) -> None:
    if path.startswith("/"):
        raise InvalidBlobPath(f"{what} {path!r} is absolute; keys are relative")
    if "\\" in path:
        raise InvalidBlobPath(f"{what} {path!r} contains a backslash")
    if _CONTROL_CHARACTER.search(path):
        raise InvalidBlobPath(f"{what} {path!r} contains a control character")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidBlobPath(f"{what} {path!r} is not valid Unicode text") from None
    if size > MAX_PATH_BYTES:
        raise InvalidBlobPath(f"{what} is {size} bytes long, over {MAX_PATH_BYTES}")


def _check_segment(segment: str, path: str, what: str) -> None:
    if not segment:
        raise InvalidBlobPath(f"{what} {path!r} has an empty segment")
    if segment.startswith("."):
        raise InvalidBlobPath(f"{what} {path!r} has a segment starting with '.'")
    if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
        raise InvalidBlobPath(f"{what} {path!r} has a segment over {MAX_SEGMENT_BYTES} bytes")


def validate_batch(items: Sequence[tuple[str, bytes]]) -> None:
    """Validate every path of a `put_many` batch; a path given twice is rejected too."""
    seen: set[str] = set()
    for path, data in items:
        validate_blob_path(path)
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data for {path!r} must be bytes, got {type(data).__name__}")
        if path in seen:
            raise InvalidBlobPath(f"blob path {path!r} appears twice in one batch")
        seen.add(path)


class BlobStorage(ABC):
    """Object storage for blobs: one instance per process, safe to share between threads.

    Subclasses implement the `_do_*` methods; the public methods validate the arguments and
    refuse to run after `close()`. Every storage failure raises `StorageError`; invalid paths
    raise `InvalidBlobPath` before anything is touched.
    """

    def __init__(self) -> None:
        self.__closed = False
        self.__close_lock = threading.Lock()

    # -- public interface -------------------------------------------------------------------

    def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Write every `(path, data)` object, replacing existing ones; durable on return.

        On a `StorageError` some of the objects may have been written (the orphan sweep
        reclaims them); none is ever visible partially written.
        """
        self._check_open()
        validate_batch(items)
        if items:
            self._do_put_many(items)

    def put_new_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Write every `(path, data)` object at a path that holds none yet (a fresh random
        key, `random_blob_paths`); durable on return.

        `put_many` without its atomic replacement, for writers whose objects nothing reads
        before they return (blob-ingest: a blob's row is committed only afterwards). The
        filesystem backend writes each file in place, without a temporary file and rename
        (about a fifth of its cost for small objects); while the call runs, an object may be
        visible partially written. A path that already holds an object is a `StorageError`
        there. On a `StorageError` the objects of the batch are deleted again (best effort);
        a crash can leave some, possibly partial, which no row references: the orphan sweep
        deletes them. Backends for which `put_many` costs no more use it.
        """
        self._check_open()
        validate_batch(items)
        if items:
            self._do_put_new_many(items)

    def put(self, path: str, data: bytes) -> None:
        """Write one object; durable on return."""
        self.put_many([(path, data)])

    def get(self, path: str) -> bytes:
        """The object's bytes; `BlobNotFoundError` (a `StorageError`) when it is missing."""
        self._check_open()
        return self._do_get(validate_blob_path(path))

    def exists(self, path: str) -> bool:
        """Whether an object is stored at `path`."""
        self._check_open()
        return self._do_exists(validate_blob_path(path))

    def delete_many(self, paths: Iterable[str]) -> None:
        """Delete the objects; a missing object is not an error."""
        self._check_open()
        unique = list(dict.fromkeys(validate_blob_path(path) for path in paths))
        if unique:
            self._do_delete_many(unique)

    def iter_objects(self, prefix: str = "") -> Iterator[StoredObject]:
        """Every object whose path starts with `prefix`, in no particular order.

        Objects written or deleted while the iteration runs may or may not be listed.
        """
        self._check_open()
        return self._do_iter_objects(validate_prefix(prefix))

    def check(self) -> None:
        """Raise `StorageError` unless the storage is reachable and usable (a startup check)."""
        self._check_open()
        self._do_check()

    def close(self) -> None:
        """Release the client and its threads; idempotent."""
        with self.__close_lock:
            if self.__closed:
                return
            self.__closed = True
        self._do_close()

    @property
    def closed(self) -> bool:
        return self.__closed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.__closed:
            raise StorageClosedError(f"{self!r} is closed")

    # -- backend implementation ---------------------------------------------------------------

    @abstractmethod
    def _do_put_many(self, items: Sequence[tuple[str, bytes]]) -> None: ...

    def _do_put_new_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        self._do_put_many(items)

    @abstractmethod
    def _do_get(self, path: str) -> bytes: ...

    @abstractmethod
    def _do_exists(self, path: str) -> bool: ...

    @abstractmethod
    def _do_delete_many(self, paths: Sequence[str]) -> None: ...

    @abstractmethod
    def _do_iter_objects(self, prefix: str) -> Iterator[StoredObject]: ...

    @abstractmethod
    def _do_check(self) -> None: ...

    @abstractmethod
    def _do_close(self) -> None: ...

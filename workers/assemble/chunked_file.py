"""A file read through its chunks where they are stored, never copied whole: what the assemble
worker opens an artifact bundle with (docs/assemble.md, The assemble worker). Upstream reads an
assembled file the same way: `File.getfile()` reads through its blobs
(`ChunkedFileBlobIndexWrapper`, src/sentry/models/files/abstractfile.py).

`ChunkedFile` is a read-only, seekable raw binary file over chunks in order, each fetched
whole when a read reaches it; it keeps the chunk last fetched and no other, so reading a zip's
directory and one small entry costs a couple of fetches and one chunk of memory.
"""

from __future__ import annotations

import bisect
import io
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workers.common.storage import StorageError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


@dataclass(frozen=True)
class StoredChunk:
    """One chunk of a file: its blob's path in storage and its size in bytes."""

    path: str
    size: int


class ChunkSizeMismatch(StorageError):
    """A chunk's stored object is not the size the file was assembled with: storage changed
    under the file (blobs are immutable), so the file cannot be read as it was checked."""

    def __init__(self, path: str, index: int, declared: int, stored: int) -> None:
        super().__init__(
            "get", path, f"chunk {index} is {stored} bytes in storage, {declared} declared"
        )
        self.index = index
        self.declared = declared
        self.stored = stored


class ChunkedFile(io.RawIOBase):
    """The bytes of `chunks` end to end; `fetch(path)` returns one chunk's bytes (the blob
    storage's `get`). Every chunk fetched must be its declared size, else `ChunkSizeMismatch`.
    """

    def __init__(self, chunks: Sequence[StoredChunk], fetch: Callable[[str], bytes]) -> None:
        super().__init__()
        if any(chunk.size < 0 for chunk in chunks):
            raise ValueError("a chunk's size cannot be negative")
        self.__chunks = tuple(chunks)
        self.__fetch = fetch
        #: Where each chunk starts in the file, then the file's size.
        self.__starts = (0, *itertools.accumulate(chunk.size for chunk in self.__chunks))
        self.__position = 0
        self.__cached_index = -1
        self.__cached = memoryview(b"")

    @property
    def size(self) -> int:
        return self.__starts[-1]

    def readable(self) -> bool:
        self.__check_open()
        return True

    def seekable(self) -> bool:
        self.__check_open()
        return True

    def tell(self) -> int:
        self.__check_open()
        return self.__position

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        self.__check_open()
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self.__position + offset
        elif whence == io.SEEK_END:
            position = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if position < 0:
            raise OSError(22, f"negative seek position {position}")
        self.__position = position
        return position

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        self.__check_open()
        with memoryview(buffer) as view, view.cast("B") as target:
            filled = 0
            while filled < len(target) and self.__position < self.size:
                index = bisect.bisect_right(self.__starts, self.__position) - 1
                chunk = self.__chunk(index)
                offset = self.__position - self.__starts[index]
                count = min(len(target) - filled, len(chunk) - offset)
                target[filled : filled + count] = chunk[offset : offset + count]
                filled += count
                self.__position += count
            return filled

    def close(self) -> None:
        self.__cached = memoryview(b"")
        self.__cached_index = -1
        super().close()

    def __chunk(self, index: int) -> memoryview:
        if index != self.__cached_index:
            chunk = self.__chunks[index]
            self.__cached = memoryview(b"")  # the previous chunk is let go before the fetch
            data = self.__fetch(chunk.path)
            if len(data) != chunk.size:
                raise ChunkSizeMismatch(chunk.path, index, chunk.size, len(data))
            self.__cached, self.__cached_index = memoryview(data), index
        return self.__cached

    def __check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")

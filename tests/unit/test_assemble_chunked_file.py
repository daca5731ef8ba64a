"""`ChunkedFile`: the bytes of its chunks end to end, read and sought as a file of those bytes
would be, one chunk fetched at a time, a chunk of the wrong size refused."""

from __future__ import annotations

import io
import os
import zipfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.assemble.chunked_file import ChunkedFile, ChunkSizeMismatch, StoredChunk
from workers.common.storage import StorageError


class Chunks:
    """Chunks kept in memory by path, with the fetches made of them."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.data = {f"chunk-{index}": piece for index, piece in enumerate(pieces)}
        self.chunks = [StoredChunk(path, len(piece)) for path, piece in self.data.items()]
        self.fetched: list[str] = []

    def fetch(self, path: str) -> bytes:
        self.fetched.append(path)
        return self.data[path]

    def open(self) -> ChunkedFile:
        return ChunkedFile(self.chunks, self.fetch)


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    pieces, at = [], 0
    for size in sizes:
        pieces.append(data[at : at + size])
        at += size
    return pieces


#: (operation, offset or size, whence): a seek, or a read of a size (-1: to the end).
operations = st.lists(
    st.tuples(
        st.sampled_from(["seek", "read", "readinto"]),
        st.integers(-40, 160),
        st.sampled_from([io.SEEK_SET, io.SEEK_CUR, io.SEEK_END]),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(sizes=st.lists(st.integers(0, 25), max_size=8), steps=operations)
def test_reads_and_seeks_match_the_same_bytes_in_memory(
    sizes: list[int], steps: list[tuple[str, int, int]]
) -> None:
    whole = os.urandom(sum(sizes))
    chunks = Chunks(split(whole, sizes))
    expected = io.BytesIO(whole)
    with chunks.open() as chunked:
        assert chunked.seekable()
        assert chunked.readable()
        for operation, offset, whence in steps:
            size = max(offset, -1)
            if operation == "seek":
                start = {io.SEEK_SET: 0, io.SEEK_CUR: expected.tell(), io.SEEK_END: len(whole)}
                if start[whence] + offset < 0:  # refused, as by a file on disk
                    with pytest.raises(OSError, match="negative seek position"):
                        chunked.seek(offset, whence)
                    continue
                assert chunked.seek(offset, whence) == expected.seek(offset, whence)
            elif operation == "read":
                assert chunked.read(size) == expected.read(size)
            else:
                into, expected_into = bytearray(size + 1), bytearray(size + 1)
                assert chunked.readinto(into) == expected.readinto(expected_into)
                assert into == expected_into
            assert chunked.tell() == expected.tell()
        assert chunked.size == len(whole)
    assert chunked.closed


def test_a_file_read_in_order_fetches_each_chunk_once() -> None:
    chunks = Chunks([b"abc", b"", b"defg", b"h"])
    with chunks.open() as chunked:
        assert [chunked.read(2) for _ in range(5)] == [b"ab", b"cd", b"ef", b"gh", b""]
    assert chunks.fetched == ["chunk-0", "chunk-2", "chunk-3"]


def test_only_the_chunk_last_read_is_kept() -> None:
    chunks = Chunks([b"abc", b"def"])
    with chunks.open() as chunked:
        chunked.seek(4)
        assert chunked.read(1) == b"e"
        chunked.seek(0)
        assert chunked.read(1) == b"a"
        assert chunked.read(1) == b"b"
        chunked.seek(-1, io.SEEK_END)
        assert chunked.read() == b"f"
    assert chunks.fetched == ["chunk-1", "chunk-0", "chunk-1"]


def test_zipfile_reads_a_zip_through_its_chunks() -> None:
    buffer = io.BytesIO()
    entries = {f"files/{index}.js": os.urandom(3000 + index) for index in range(5)}
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", b'{"files": {}}')
        for name, data in entries.items():
            archive.writestr(name, data)
    whole = buffer.getvalue()
    chunks = Chunks(split(whole, [1000] * (len(whole) // 1000 + 1)))
    with chunks.open() as chunked, zipfile.ZipFile(chunked) as archive:
        assert archive.testzip() is None
        assert archive.read("manifest.json") == b'{"files": {}}'
        assert {name: archive.read(name) for name in entries} == entries


def test_only_the_directory_and_the_entry_read_are_fetched() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("manifest.json", b"{}")
        archive.writestr("files/big.js", os.urandom(50_000))
    whole = buffer.getvalue()
    chunks = Chunks(split(whole, [10_000] * 6))
    with chunks.open() as chunked, zipfile.ZipFile(chunked) as archive:
        assert archive.read("manifest.json") == b"{}"
    assert set(chunks.fetched) == {"chunk-0", "chunk-5"}


@pytest.mark.parametrize("stored", [b"ab", b"abcd"], ids=["shorter", "longer"])
def test_a_chunk_whose_stored_size_differs_from_its_declared_size_is_refused(
    stored: bytes,
) -> None:
    chunks = Chunks([b"abc", b"abc"])
    chunks.data["chunk-1"] = stored
    chunked = chunks.open()
    assert chunked.read(3) == b"abc"
    with pytest.raises(ChunkSizeMismatch) as refused:
        chunked.read(1)
    assert isinstance(refused.value, StorageError)
    assert str(refused.value).endswith(f"chunk 1 is {len(stored)} bytes in storage, 3 declared")
    assert (refused.value.path, refused.value.index) == ("chunk-1", 1)


def test_bad_arguments_and_a_closed_file_are_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        ChunkedFile([StoredChunk("a", -1)], Chunks([]).fetch)
    chunked = Chunks([b"abc"]).open()
    with pytest.raises(ValueError, match="invalid whence"):
        chunked.seek(0, 3)
    chunked.close()
    with pytest.raises(ValueError, match="closed file"):
        chunked.read(1)
    with pytest.raises(ValueError, match="closed file"):
        chunked.seek(0)

"""Streaming multipart → chunks: limits (strict `>`), error messages, bounded decompression."""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Sequence

import pytest

from harness.gateway import multipart_body
from workers.gateway.multipart import ChunkReader, ReceivedChunk, UploadRejected, boundary_of
from workers.gateway.options import UploadLimits

MIB = 1024 * 1024
LIMITS = UploadLimits()


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def read(
    parts: Sequence[tuple[str, str | None, bytes]],
    limits: UploadLimits = LIMITS,
    piece: int = 65536,
) -> list[ReceivedChunk]:
    body, content_type = multipart_body(parts)
    reader = ChunkReader(boundary_of(content_type), limits)
    for start in range(0, len(body), piece):
        reader.feed(body[start : start + piece])
    return reader.finish()


def rejected(parts: Sequence[tuple[str, str | None, bytes]], **kw: object) -> str:
    with pytest.raises(UploadRejected) as caught:
        read(parts, **kw)  # type: ignore[arg-type]
    return caught.value.message


def test_raw_and_gzip_parts_become_chunks_with_their_values_as_sent() -> None:
    raw, zipped = os.urandom(1000), os.urandom(3000)
    compressed = gzip.compress(zipped)
    chunks = read([("file", sha1(raw), raw), ("file_gzip", sha1(zipped), compressed)])
    assert [(c.checksum, c.encoding, c.size) for c in chunks] == [
        (sha1(raw), "identity", 1000),
        (sha1(zipped), "gzip", 3000),
    ]
    assert chunks[0].value == raw
    assert chunks[1].value == compressed


def test_parser_works_byte_by_byte() -> None:
    data = os.urandom(300)
    chunks = read([("file_gzip", sha1(data), gzip.compress(data))], piece=1)
    assert chunks[0].checksum == sha1(data)


def test_concatenated_gzip_members_are_one_chunk() -> None:
    first, second = os.urandom(500), os.urandom(700)
    value = gzip.compress(first) + gzip.compress(second)
    (chunk,) = read([("file_gzip", sha1(first + second), value)])
    assert chunk.size == 1200


def test_exact_limits_pass() -> None:
    eight = os.urandom(8 * MIB)
    assert read([("file", sha1(eight), eight)])[0].size == 8 * MIB
    assert len(read([("file", sha1(b"x%d" % i), b"x%d" % i) for i in range(64)])) == 64
    four = [os.urandom(8 * MIB) for _ in range(4)]
    assert sum(c.size for c in read([("file", sha1(d), d) for d in four])) == 32 * MIB


def test_each_error_message() -> None:
    big = os.urandom(8 * MIB + 1)
    assert rejected([("file", sha1(big), big)]) == "Chunk size too large"
    seven = [os.urandom(7 * MIB) for _ in range(5)]
    assert rejected([("file", sha1(d), d) for d in seven]) == "Request too large"
    many = [("file", sha1(b"%d" % i), b"%d" % i) for i in range(65)]
    assert rejected(many) == "Too many chunks"
    assert rejected([("file", sha1(b"other"), b"payload")]) == "Checksum mismatch"
    assert rejected([("file", sha1(b"x").upper(), b"x")]) == "Checksum mismatch"
    assert rejected([("file", None, b"payload")]) == "Chunk without a filename"
    assert rejected([("file_gzip", sha1(b"x"), b"not gzip at all")]) == "Invalid gzip payload"
    truncated = gzip.compress(os.urandom(5000))[:-20]
    assert rejected([("file_gzip", sha1(b"x"), truncated)]) == "Invalid gzip payload"
    assert rejected([("other", sha1(b"x"), b"x")]) == "Unexpected form field"
    assert rejected([("file", sha1(b""), b"")]) == "Empty chunk"


def test_a_gzip_bomb_is_refused_after_limit_plus_one_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = gzip.compress(b"\0" * (64 * MIB), compresslevel=9)
    produced: list[int] = []
    real = zlib.decompressobj

    class Spy:
        def __init__(self, wbits: int) -> None:
            self.inner = real(wbits)

        def decompress(self, data: bytes, max_length: int = 0) -> bytes:
            out = self.inner.decompress(data, max_length)
            produced.append(len(out))
            return out

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

    monkeypatch.setattr("workers.common.chunk_decoder.zlib.decompressobj", Spy)
    assert rejected([("file_gzip", sha1(b"bomb"), bomb)]) == "Chunk size too large"
    assert sum(produced) == 8 * MIB + 1


def test_the_65th_part_is_refused_before_its_data_is_read() -> None:
    parts = [("file", sha1(b"%d" % i), b"%d" % i) for i in range(64)]
    body, content_type = multipart_body([*parts, ("file", "x" * 40, b"y" * MIB)])
    reader = ChunkReader(boundary_of(content_type), LIMITS)
    cut = body.index(b"y" * 16)
    with pytest.raises(UploadRejected, match="Too many chunks"):
        reader.feed(body[:cut])


def test_a_body_over_the_raw_limit_is_refused() -> None:
    limits = UploadLimits(max_request_size=1024)
    reader = ChunkReader(b"abc", limits)
    with pytest.raises(UploadRejected, match="Request too large"):
        reader.feed(b"\0" * (limits.max_body_bytes + 1))


def test_not_multipart_and_malformed_bodies() -> None:
    for content_type in (None, "application/json", "multipart/form-data"):
        with pytest.raises(UploadRejected, match="Expected multipart/form-data"):
            boundary_of(content_type)
    reader = ChunkReader(b"abc", LIMITS)
    reader.feed(b'--abc\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\nxx')
    with pytest.raises(UploadRejected, match="Malformed multipart body"):
        reader.finish()


def test_a_compressed_part_too_large_for_kafka_is_refused_however_small_it_inflates() -> None:
    # 1,000 bytes inflated, 17 MB as sent: Kafka would refuse the message (once a 500).
    value = gzip.compress(b"x" * 1000) + b"\0" * (17 * MIB)
    assert rejected([("file_gzip", sha1(b"x" * 1000), value)]) == "Chunk size too large"


def test_the_requests_content_encoding_says_how_file_parts_are_encoded() -> None:
    data = os.urandom(2000)
    body, content_type = multipart_body([("file", sha1(data), gzip.compress(data))])
    reader = ChunkReader(boundary_of(content_type), LIMITS, content_encoding=" GZip ")
    reader.feed(body)
    (chunk,) = reader.finish()
    assert (chunk.encoding, chunk.size) == ("gzip", 2000)


def test_an_unknown_content_encoding_is_refused_before_the_body_is_read() -> None:
    with pytest.raises(UploadRejected, match="Unsupported Content-Encoding"):
        ChunkReader(b"b", LIMITS, content_encoding="br")


def test_content_encoding_cannot_be_combined_with_file_gzip() -> None:
    data = b"payload"
    body, content_type = multipart_body([("file_gzip", sha1(data), gzip.compress(data))])
    reader = ChunkReader(boundary_of(content_type), LIMITS, content_encoding="gzip")
    with pytest.raises(UploadRejected, match="Cannot combine Content-Encoding with file_gzip"):
        reader.feed(body)

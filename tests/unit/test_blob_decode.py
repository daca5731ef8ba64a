from __future__ import annotations

import gzip
import hashlib
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.blob_ingest.decode import verify_chunk
from workers.blob_ingest.strategy import batch_weight
from workers.common.chunk_uploads import (
    MAX_CHUNK_SIZE,
    ChunkEventError,
    ChunkHeaders,
    encode_headers,
    parse_headers,
)


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def headers_for(data: bytes, encoding: str = "identity") -> ChunkHeaders:
    return parse_headers(encode_headers(7, sha1(data), encoding, 1_700_000_000_000))  # type: ignore[arg-type]


@given(st.binary(min_size=1, max_size=4096), st.booleans())
def test_valid_chunks_round_trip(data: bytes, compress: bool) -> None:
    value = gzip.compress(data) if compress else data
    chunk = verify_chunk(headers_for(data, "gzip" if compress else "identity"), value)
    assert chunk.data == data
    assert chunk.checksum == sha1(data)
    assert chunk.organization_id == 7
    assert chunk.wire_size == len(value)


def test_exactly_the_limit_passes_and_one_more_byte_fails() -> None:
    data = b"\0" * MAX_CHUNK_SIZE
    assert len(verify_chunk(headers_for(data, "gzip"), gzip.compress(data)).data) == MAX_CHUNK_SIZE
    bigger = data + b"\0"
    with pytest.raises(ChunkEventError, match="chunk_too_large"):
        verify_chunk(headers_for(bigger), bigger)
    with pytest.raises(ChunkEventError, match="chunk_too_large: decoded chunk exceeds"):
        verify_chunk(headers_for(bigger, "gzip"), gzip.compress(bigger))


def test_a_gzip_bomb_is_refused_after_at_most_limit_plus_one_bytes() -> None:
    bomb = gzip.compress(b"\0" * (200 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 300 * 1024
    bomb_sha1 = "0" * 40  # never reached: the size is refused first
    with pytest.raises(ChunkEventError) as error:
        verify_chunk(parse_headers(encode_headers(7, bomb_sha1, "gzip", 1)), bomb)
    assert error.value.code == "chunk_too_large"


@pytest.mark.parametrize(
    ("value", "detail"),
    [
        (b"not gzip at all", "gzip stream is invalid"),
        (gzip.compress(b"hello world")[:-6], "gzip stream is truncated"),
        (gzip.compress(b"hello") + b"trailing", "gzip stream is invalid"),
        (zlib.compress(b"zlib, not gzip"), "gzip stream is invalid"),
    ],
)
def test_corrupt_gzip_is_bad_input(value: bytes, detail: str) -> None:
    with pytest.raises(ChunkEventError, match=detail) as error:
        verify_chunk(headers_for(b"hello world", "gzip"), value)
    assert error.value.code == "corrupt_gzip"


def test_concatenated_gzip_members_and_zero_padding_are_one_chunk() -> None:
    # What the gateway accepted and blob-ingest once dead-lettered (issue 14).
    data = b"first member " + b"second member"
    value = gzip.compress(b"first member ") + b"\0" * 3 + gzip.compress(b"second member")
    assert verify_chunk(headers_for(data, "gzip"), value + b"\0\0").data == data


def test_checksum_mismatch_names_both_sums_and_no_bytes() -> None:
    data = b"secret payload"
    wrong = parse_headers(encode_headers(7, sha1(b"other"), "identity", 1))
    with pytest.raises(ChunkEventError) as error:
        verify_chunk(wrong, data)
    assert error.value.code == "checksum_mismatch"
    assert sha1(data) in error.value.reason
    assert "secret" not in error.value.reason


def test_empty_chunk_is_refused() -> None:
    with pytest.raises(ChunkEventError, match="empty_chunk"):
        verify_chunk(headers_for(b""), b"")


def good_headers() -> list[tuple[str, bytes]]:
    return encode_headers(7, sha1(b"x"), "identity", 1)


def replace(name: str, value: bytes | None) -> list[tuple[str, bytes | None]]:
    return [(key, value if key == name else old) for key, old in good_headers()]


@pytest.mark.parametrize(
    ("headers", "code", "detail"),
    [
        ([h for h in good_headers() if h[0] != "sha1"], "missing_header", "'sha1' is missing"),
        (replace("organization-id", None), "missing_header", "'organization-id' is missing"),
        ([*good_headers(), ("sha1", b"a" * 40)], "invalid_header", "appears 2 times"),
        (replace("sha1", sha1(b"x").upper().encode()), "invalid_checksum", "lowercase"),
        (replace("sha1", b"abc"), "invalid_checksum", "40 lowercase"),
        (replace("organization-id", b"-3"), "invalid_header", "decimal integer"),
        (replace("organization-id", b"0"), "invalid_header", "must be > 0"),
        (replace("organization-id", b"99999999999999999999"), "invalid_header", "decimal"),
        (replace("content-encoding", b"br"), "unknown_encoding", "identity, gzip or zstd"),
        (replace("uploaded-at", b"yesterday"), "invalid_header", "'uploaded-at'"),
    ],
)
def test_bad_headers_have_specific_reasons(
    headers: list[tuple[str, bytes | None]], code: str, detail: str
) -> None:
    with pytest.raises(ChunkEventError, match=detail) as error:
        parse_headers(headers)
    assert error.value.code == code


def test_header_order_and_other_headers_even_repeated_do_not_matter() -> None:
    expected = parse_headers(good_headers())
    headers: list[tuple[str, bytes | None]] = [
        ("trace", b"1"),
        *reversed(good_headers()),
        ("trace", b"2"),
        ("empty", None),
    ]
    assert parse_headers(headers) == expected


@pytest.mark.parametrize("name", ["organization-id", "sha1", "content-encoding", "uploaded-at"])
def test_a_repeated_header_is_refused_even_with_the_same_value(name: str) -> None:
    value = dict(good_headers())[name]
    with pytest.raises(ChunkEventError, match=f"'{name}' appears 3 times") as error:
        parse_headers([*good_headers(), (name, value), (name, value)])
    assert error.value.code == "invalid_header"


def test_batch_weight_fills_on_count_or_bytes() -> None:
    from arroyo.types import Value

    from workers.blob_ingest.decode import VerifiedChunk

    weight = batch_weight(max_batch_size=1000, max_batch_bytes=64 * 1024 * 1024)

    def of(size: int) -> int:
        return weight(Value(VerifiedChunk(1, "0" * 40, b"\0" * size, 0, size), {}))

    assert of(4096) == 1
    # 64 MiB a batch: eight 8 MiB chunks fill it, seven do not.
    assert 7 * of(MAX_CHUNK_SIZE) < 1000 <= 8 * of(MAX_CHUNK_SIZE)

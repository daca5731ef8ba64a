"""The shared chunk decoder: gzip as `gzip.decompress` reads it, zstd frames, bounds, and the
same verdict at the gateway (streamed multipart) and at blob-ingest (one Kafka value)."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.gateway import multipart_body
from workers.blob_ingest.decode import verify_chunk
from workers.common.chunk_decoder import ChunkDecoder, decode_chunk
from workers.common.chunk_uploads import (
    ChunkEventError,
    Encoding,
    encode_headers,
    parse_headers,
)
from workers.gateway.multipart import ChunkReader, UploadRejected, boundary_of
from workers.gateway.options import UploadLimits

MIB = 1024 * 1024
SMALL_LIMIT = 4096


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def zstd_frame(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


# A stream: pieces that are valid members/frames, zero padding, garbage, or a cut.
_payload = st.binary(min_size=0, max_size=600)
_gzip_piece = st.one_of(
    _payload.map(lambda data: ("member", gzip.compress(data))),
    st.integers(1, 5).map(lambda n: ("pad", b"\0" * n)),
    st.binary(min_size=1, max_size=12).map(lambda junk: ("junk", junk)),
)
_zstd_piece = st.one_of(
    _payload.map(lambda data: ("member", zstd_frame(data))),
    st.binary(min_size=1, max_size=12).map(lambda junk: ("junk", junk)),
)


@st.composite
def streams(draw: st.DrawFn, encoding: Encoding) -> bytes:
    pieces = draw(st.lists(_gzip_piece if encoding == "gzip" else _zstd_piece, max_size=4))
    stream = b"".join(piece for _, piece in pieces)
    if stream and draw(st.booleans()):
        stream = stream[: draw(st.integers(0, len(stream) - 1))]  # cut short
    return stream


def oracle(encoding: Encoding, stream: bytes) -> bytes | None:
    """The decoded bytes when the stream is a valid, non-empty chunk; else None."""
    try:
        if encoding == "gzip":
            data = gzip.decompress(stream)
        elif encoding == "zstd":
            data = _zstd_frames(stream)
        else:
            data = stream
    except (OSError, EOFError, zlib.error, zstandard.ZstdError):
        return None
    return data if 0 < len(data) <= SMALL_LIMIT else None


def _zstd_frames(stream: bytes) -> bytes:
    """Complete frames back to back, nothing else (one `decompressobj` per frame)."""
    output = bytearray()
    rest = stream
    if not rest:
        raise zstandard.ZstdError("no frame")
    decompressor = zstandard.ZstdDecompressor()
    while rest:
        frame = decompressor.decompressobj()
        output += frame.decompress(rest)
        if not frame.eof:
            raise zstandard.ZstdError("truncated")
        rest = frame.unused_data
    return bytes(output)


def decoded(encoding: Encoding, stream: bytes, cuts: list[int]) -> bytes | None:
    decoder = ChunkDecoder(encoding, SMALL_LIMIT, keep=True)
    try:
        start = 0
        for cut in [*sorted(cuts), len(stream)]:
            decoder.feed(stream[start:cut])
            start = max(start, cut)
        decoder.finish()
    except ChunkEventError:
        return None
    return decoder.data


@settings(max_examples=300)
@given(st.sampled_from(["identity", "gzip", "zstd"]), st.data())
def test_the_decoder_accepts_exactly_the_valid_streams_in_any_pieces(
    encoding: Encoding, data: st.DataObject
) -> None:
    stream = data.draw(streams(encoding) if encoding != "identity" else _payload)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    assert decoded(encoding, stream, cuts) == oracle(encoding, stream)


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    data_sha1: str | None


def at_gateway(field: str, encoding: str | None, claimed: str, value: bytes) -> Verdict:
    body, content_type = multipart_body([(field, claimed, value)])
    limits = UploadLimits(chunk_size=SMALL_LIMIT)
    reader = ChunkReader(boundary_of(content_type), limits, content_encoding=encoding)
    try:
        for start in range(0, len(body), 97):
            reader.feed(body[start : start + 97])
        (chunk,) = reader.finish()
    except UploadRejected:
        return Verdict(False, None)
    return Verdict(True, chunk.checksum)


def at_blob_ingest(encoding: Encoding, claimed: str, value: bytes) -> Verdict:
    try:
        headers = parse_headers(encode_headers(7, claimed, encoding, 1))
        chunk = verify_chunk(headers, value, limit=SMALL_LIMIT)
    except ChunkEventError:
        return Verdict(False, None)
    return Verdict(True, sha1(chunk.data))


@settings(max_examples=300)
@given(
    st.sampled_from([("file", None), ("file_gzip", None), ("file", "gzip"), ("file", "ZSTD")]),
    st.booleans(),
    st.data(),
)
def test_the_gateway_refuses_what_blob_ingest_would_dead_letter(
    part: tuple[str, str | None], claim_the_right_sha1: bool, data: st.DataObject
) -> None:
    field, declared = part
    encoding: Encoding = "gzip" if field == "file_gzip" else (declared or "identity").lower()  # type: ignore[assignment]
    value = data.draw(streams(encoding) if encoding != "identity" else _payload)
    expected = oracle(encoding, value)
    claimed = sha1(expected) if expected is not None and claim_the_right_sha1 else "a" * 40
    gateway = at_gateway(field, declared, claimed, value)
    assert gateway == at_blob_ingest(encoding, claimed, value)
    assert gateway.accepted == (expected is not None and claimed == sha1(expected))


def test_a_zstd_bomb_is_refused_without_decoding_it_all() -> None:
    bomb = zstd_frame(b"\0" * (256 * MIB))
    assert len(bomb) < 64 * 1024
    decoder = ChunkDecoder("zstd")
    with pytest.raises(ChunkEventError) as error:
        decoder.feed(bomb)
    assert error.value.code == "chunk_too_large"
    assert decoder.size == 0


def test_several_zstd_frames_are_one_chunk_and_garbage_after_them_is_corrupt() -> None:
    value = zstd_frame(b"one ") + zstd_frame(b"two")
    assert decode_chunk("zstd", value, sha1(b"one two")) == b"one two"
    for bad in (value + b"\x01", value[:-2]):
        with pytest.raises(ChunkEventError) as error:
            decode_chunk("zstd", bad, sha1(b"one two"))
        assert error.value.code == "corrupt_zstd"


def test_a_value_too_large_for_kafka_is_refused_whatever_it_decodes_to() -> None:
    # 1,000 decoded bytes in a gzip stream padded to past the cap on bytes as sent.
    value = gzip.compress(b"x" * 1000) + b"\0" * 5000
    decoder = ChunkDecoder("gzip", max_wire_bytes=4096)
    with pytest.raises(ChunkEventError) as error:
        decoder.feed(value)
    assert error.value.code == "value_too_large"


def test_the_callers_room_is_a_request_limit_apart_from_the_chunk_limit() -> None:
    decoder = ChunkDecoder("identity", limit=100)
    assert decoder.feed(b"x" * 60, room=60) == 60
    with pytest.raises(ChunkEventError) as error:
        decoder.feed(b"x" * 10, room=5)
    assert error.value.code == "request_too_large"
    with pytest.raises(ChunkEventError) as error:
        ChunkDecoder("identity", limit=10).feed(b"x" * 11, room=50)
    assert error.value.code == "chunk_too_large"


@pytest.mark.parametrize(
    ("value", "limit", "max_wire", "claimed", "code"),
    [
        (b"x" * 100, 100, 100, sha1(b"x" * 100), None),
        (b"x" * 101, 100, 200, sha1(b"x" * 101), "chunk_too_large"),
        (b"x" * 101, 200, 100, sha1(b"x" * 101), "value_too_large"),
        (b"x" * 100, 100, 100, sha1(b"y" * 100), "checksum_mismatch"),
        (b"", 100, 100, sha1(b""), "empty_chunk"),
        (b"x" * 5000, MIB, MIB, sha1(b"x" * 5000), None),
    ],
)
def test_identity_values_get_the_decoders_verdict_at_its_limits(
    value: bytes, limit: int, max_wire: int, claimed: str, code: str | None
) -> None:
    # `decode_chunk` checks a raw value without a decoder; the verdict must not change.
    def verdict(decode: Callable[[], bytes]) -> tuple[str, str] | bytes:
        try:
            return decode()
        except ChunkEventError as error:
            return error.code, error.reason

    def through_the_decoder() -> bytes:
        decoder = ChunkDecoder("identity", limit, max_wire, keep=True)
        decoder.feed(value)
        decoder.finish(claimed)
        return decoder.data

    expected = verdict(through_the_decoder)
    assert verdict(lambda: decode_chunk("identity", value, claimed, limit, max_wire)) == expected
    assert expected == value if code is None else expected[0] == code

"""The assemble bodies' decoder: typed, refusing deep, oversized and malformed input early with
the messages clients have always been answered, and small in memory (docs/gateway.md,
Bounded assemble)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest

from workers.gateway.schema import (
    MAX_BODY_BYTES,
    MAX_CHUNKS_PER_FILE,
    MAX_FILES_PER_REQUEST,
    BadRequest,
    parse_bundle_request,
    parse_dif_request,
)

MIB = 1024 * 1024
SHA = "a" * 40
OTHER = "b" * 40
NOT_A_SHA1 = "must be a sha1: 40 lowercase hexadecimal characters"
CHUNKS = f"chunks must be a list of at most {MAX_CHUNKS_PER_FILE} sha1s"
PROJECTS = "projects must be a list of project slugs"


def text(what: str) -> str:
    return f"{what} must be a string of at most 1024 characters"


def _dif(files: dict[str, Any]) -> bytes:
    return orjson.dumps(files)


def _refused(parse: Callable[[bytes], object], body: bytes) -> str:
    with pytest.raises(BadRequest) as refused:
        parse(body)
    return str(refused.value)


class Peak:
    current = 0
    peak = 0


@contextmanager
def traced() -> Iterator[Peak]:
    """Python memory allocated inside the block: still held at its end, and at its peak."""
    tracemalloc.start()
    result = Peak()
    try:
        yield result
    finally:
        result.current, result.peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()


def _filling(head: bytes, item: bytes, tail: bytes, separator: bytes = b",") -> bytes:
    """`head item,item,... tail` as close to the 16 MiB body limit as it gets."""
    count = (MAX_BODY_BYTES - len(head) - len(tail)) // (len(item) + len(separator))
    body = head + separator.join([item] * count) + tail
    assert MAX_BODY_BYTES - 64 <= len(body) <= MAX_BODY_BYTES
    return body


# ---- what is accepted ----------------------------------------------------------------------


def test_a_debug_file_body_decodes_into_file_requests() -> None:
    (dif,) = parse_dif_request(
        _dif({SHA: {"name": "a.so", "chunks": [SHA, OTHER], "debug_id": "x", "extra": [1]}})
    )
    assert (dif.checksum, dif.name, dif.chunks, dif.debug_id) == (SHA, "a.so", (SHA, OTHER), "x")
    # A bytearray (how the body is received) is decoded without a copy.
    assert parse_dif_request(bytearray(_dif({SHA: {"name": "a", "chunks": []}})))[0].chunks == ()


def test_a_bundle_body_decodes_with_projects_deduplicated() -> None:
    bundle = parse_bundle_request(
        orjson.dumps(
            {"checksum": SHA, "chunks": [OTHER], "projects": ["web", "web", "api"], "dist": "d"}
        )
    )
    assert (bundle.file.checksum, bundle.file.chunks) == (SHA, (OTHER,))
    assert (bundle.projects, bundle.version, bundle.dist) == (("web", "api"), None, "d")
    assert parse_bundle_request(orjson.dumps({"checksum": SHA, "chunks": []})).projects == ()


def test_duplicate_chunk_lists_and_checksums_are_shared() -> None:
    """The same chunk in many places is one string, the same list one tuple: a request
    keeps what its distinct checksums need."""
    body = _dif(
        {
            f"{index:040x}": {
                "name": f"f{index}",
                "chunks": [SHA, OTHER, SHA] if index % 2 else [SHA],
            }
            for index in range(10)
        }
    )
    files = parse_dif_request(body)
    assert files[1].chunks is files[3].chunks
    assert files[0].chunks is files[2].chunks
    assert files[1].chunks[0] is files[1].chunks[2] is files[0].chunks[0]
    # A chunk list given twice in one file: the last one counts, as in any JSON object.
    (twice,) = parse_dif_request(
        b'{"%s": {"name": "a", "chunks": ["%s"], "chunks": ["%s", "%s"]}}'
        % (SHA.encode(), SHA.encode(), OTHER.encode(), OTHER.encode())
    )
    assert twice.chunks == (OTHER, OTHER)


def test_exactly_the_limits_pass() -> None:
    files = parse_dif_request(
        _dif(
            {f"{i:040x}": {"name": "x" * 1024, "chunks": []} for i in range(MAX_FILES_PER_REQUEST)}
        )
    )
    assert len(files) == MAX_FILES_PER_REQUEST
    (big,) = parse_dif_request(_dif({SHA: {"name": "x", "chunks": [SHA] * MAX_CHUNKS_PER_FILE}}))
    assert len(big.chunks) == MAX_CHUNKS_PER_FILE


# ---- what is refused, with which message ---------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "body is not valid JSON"),
        (b'{"%s": {"name": "a", "chunks": []}} trailing' % SHA.encode(), "body is not valid JSON"),
        (b"\xff\xfe", "body is not valid JSON"),
        (b"[]", "body must be a JSON object"),
        (b'"text"', "body must be a JSON object"),
        (b'{"ABC": {"name": "a", "chunks": []}}', f"each key {NOT_A_SHA1}"),
        (_dif({SHA: []}), "each file must be a JSON object"),
        (_dif({SHA: {"name": "a"}}), CHUNKS),
        (_dif({SHA: {"name": "a", "chunks": None}}), CHUNKS),
        (_dif({SHA: {"name": "a", "chunks": SHA}}), CHUNKS),
        (_dif({SHA: {"name": "a", "chunks": ["nope"]}}), f"each chunk {NOT_A_SHA1}"),
        (_dif({SHA: {"name": "a", "chunks": [1]}}), f"each chunk {NOT_A_SHA1}"),
        (_dif({SHA: {"chunks": []}}), "each file needs a name"),
        (_dif({SHA: {"name": None, "chunks": []}}), "each file needs a name"),
        (_dif({SHA: {"name": "", "chunks": []}}), "each file needs a name"),
        (_dif({SHA: {"name": 5, "chunks": []}}), text("name")),
        (_dif({SHA: {"name": "x" * 1025, "chunks": []}}), text("name")),
        (_dif({SHA: {"name": "a", "chunks": [], "debug_id": []}}), text("debug_id")),
    ],
)  # fmt: skip
def test_debug_file_bodies_are_refused_with_todays_messages(body: bytes, message: str) -> None:
    assert _refused(parse_dif_request, body) == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, f"checksum {NOT_A_SHA1}"),
        ({"checksum": "x", "chunks": []}, f"checksum {NOT_A_SHA1}"),
        ({"checksum": SHA}, CHUNKS),
        ({"checksum": SHA, "chunks": [SHA.upper()]}, f"each chunk {NOT_A_SHA1}"),
        ({"checksum": SHA, "chunks": [], "projects": [1]}, PROJECTS),
        ({"checksum": SHA, "chunks": [], "projects": "web"}, PROJECTS),
        ({"checksum": SHA, "chunks": [], "projects": [""]}, PROJECTS),
        ({"checksum": SHA, "chunks": [], "projects": ["x" * 51]}, PROJECTS),
        ({"checksum": SHA, "chunks": [], "projects": ["p"] * 1001}, PROJECTS),
        ({"checksum": SHA, "chunks": [], "version": 1}, text("version")),
        ({"checksum": SHA, "chunks": [], "dist": "d" * 1025}, text("dist")),
    ],
)  # fmt: skip
def test_bundle_bodies_are_refused_with_todays_messages(body: Any, message: str) -> None:
    assert _refused(parse_bundle_request, orjson.dumps(body)) == message
    assert _refused(parse_bundle_request, b"[]") == "body must be a JSON object"


@pytest.mark.parametrize(
    "checksum",
    [
        SHA + "\n",  # `$` in a pattern would let this through
        "\n" + SHA[1:],
        SHA[:-1] + "\n",
        SHA[:-1],
        SHA + "a",
        SHA.upper(),
        SHA[:-1] + "g",
        SHA[:-1] + " ",
        SHA[:-1] + "\u00e9",
        SHA[:-1] + "\u0661",  # ARABIC-INDIC DIGIT ONE: a digit to `\d`, not to a sha1
        "",
    ],
)
def test_checksums_are_a_full_match_of_40_lowercase_hex_digits(checksum: str) -> None:
    assert _refused(parse_dif_request, _dif({checksum: {"name": "a", "chunks": []}})) == (
        f"each key {NOT_A_SHA1}"
    )
    assert _refused(parse_dif_request, _dif({SHA: {"name": "a", "chunks": [SHA, checksum]}})) == (
        f"each chunk {NOT_A_SHA1}"
    )
    assert _refused(parse_bundle_request, orjson.dumps({"checksum": checksum, "chunks": []})) == (
        f"checksum {NOT_A_SHA1}"
    )


def test_too_many_files_or_chunks_are_refused() -> None:
    too_many = {f"{i:040x}": {"name": "a", "chunks": []} for i in range(MAX_FILES_PER_REQUEST + 1)}
    assert _refused(parse_dif_request, _dif(too_many)) == "at most 1000 files per request"
    long = {SHA: {"name": "a", "chunks": [SHA] * (MAX_CHUNKS_PER_FILE + 1)}}
    assert _refused(parse_dif_request, _dif(long)) == "chunks must be a list of at most 512 sha1s"


# ---- deep, huge and hostile bodies ---------------------------------------------------------

_HEAD = b'{"%s": {"name": "a", "chunks": [' % SHA.encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # 16 MiB of empty objects where checksums belong: refused at the first one.
        (_filling(_HEAD, b"{}", b"]}}"), f"each chunk {NOT_A_SHA1}"),
        (_filling(_HEAD, b"[]", b"]}}"), f"each chunk {NOT_A_SHA1}"),
        (_filling(_HEAD, b"0", b"]}}"), f"each chunk {NOT_A_SHA1}"),
        (_filling(b"[", b"{}", b"]"), "body must be a JSON object"),
        # Nesting: as deep as 16 MiB allows, at the top, in a file and in a field nobody reads.
        (_filling(b"", b"[", b"", b""), "body must be a JSON object"),
        (_filling(b'{"%s": ' % SHA.encode(), b"[", b"", b""), "each file must be a JSON object"),
        (
            _filling(b'{"%s": {"name": "a", "chunks": [], "x": ' % SHA.encode(), b"[", b"", b""),
            "body is not valid JSON",
        ),
        (
            _filling(
                b'{"%s": {"name": "a", "chunks": [], "x": ' % SHA.encode(), b'{"a":', b"", b""
            ),
            "body is not valid JSON",
        ),
    ],
)
def test_hostile_16_mib_bodies_are_refused_without_being_built(body: bytes, message: str) -> None:
    with traced() as memory:
        assert _refused(parse_dif_request, body) == message
    assert memory.peak < MIB, f"peak {memory.peak / MIB:.1f} MiB"


def test_a_field_nobody_reads_is_skipped_unbuilt_however_large() -> None:
    body = _filling(b'{"%s": {"name": "a", "chunks": [], "x": [' % SHA.encode(), b"{}", b"]}}")
    with traced() as memory:
        (file,) = parse_dif_request(body)
    assert file.chunks == ()
    assert memory.peak < MIB, f"peak {memory.peak / MIB:.1f} MiB"


def _maximal(distinct: bool) -> bytes:
    """1,000 files sharing as many chunk checksums as fit in 16 MiB."""
    per_file = (MAX_BODY_BYTES - 100 * MAX_FILES_PER_REQUEST) // 43 // MAX_FILES_PER_REQUEST
    counter = iter(range(10**9))
    files = {
        f"{index:040x}": {
            "name": f"f{index}",
            "chunks": [f"{next(counter) if distinct else 1:040x}" for _ in range(per_file)],
        }
        for index in range(MAX_FILES_PER_REQUEST)
    }
    body = _dif(files)
    assert MAX_BODY_BYTES * 0.95 < len(body) <= MAX_BODY_BYTES
    return body


@pytest.mark.parametrize("distinct", [True, False], ids=["distinct", "same"])
def test_a_maximal_valid_body_stays_small(distinct: bool) -> None:
    """The old decoder built up to 486 MiB for a 16 MiB body; a maximal valid one now peaks
    at about 61 MiB (about 390,000 distinct checksums) and keeps what its distinct checksums
    need."""
    body = _maximal(distinct)
    with traced() as memory:
        files = parse_dif_request(body)
    assert len(files) == MAX_FILES_PER_REQUEST
    assert memory.peak < 80 * MIB, f"peak {memory.peak / MIB:.1f} MiB"
    if distinct:
        assert memory.current < 48 * MIB, f"kept {memory.current / MIB:.1f} MiB"
    else:
        assert memory.current < MIB, f"kept {memory.current / MIB:.1f} MiB"

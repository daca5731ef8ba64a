"""Blob path rules and `random_blob_path`."""

from __future__ import annotations

import os
import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.common.storage import (
    InvalidBlobPath,
    StorageError,
    is_blob_path,
    random_blob_path,
    random_blob_paths,
    validate_blob_path,
    validate_prefix,
)

RANDOM_PATH = re.compile(r"[0-9a-f]{2}/[0-9a-f]{4}/[0-9a-f]{26}")


def test_random_blob_path_is_uuid4_hex_split_2_4_26() -> None:
    paths = [random_blob_path() for _ in range(2000)]
    for path in paths:
        assert RANDOM_PATH.fullmatch(path), path
        digits = path.replace("/", "")
        assert len(digits) == 32
        assert digits[12] == "4"  # uuid version 4
        assert digits[16] in "89ab"  # RFC 4122 variant
        assert validate_blob_path(path) == path
    assert len(set(paths)) == len(paths)
    assert len({path[:2] for path in paths}) > 200  # spread over the 256 top directories


@pytest.mark.parametrize(
    "path",
    [
        "ab/cdef/0123456789abcdef0123456789",
        "a",
        "ab/cd",
        "with space/and-dash_underscore.dot",
        "ünïcode/ok",
        "a" * 255,
    ],
)
def test_valid_paths(path: str) -> None:
    assert validate_blob_path(path) == path
    assert is_blob_path(path)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "empty"),
        ("/ab/cdef", "absolute"),
        ("ab/../cdef", "starting with '.'"),
        ("..", "starting with '.'"),
        ("ab/./cdef", "starting with '.'"),
        ("ab/.tmp-123", "starting with '.'"),
        ("ab//cdef", "empty segment"),
        ("ab/cdef/", "empty segment"),
        ("ab\\cdef", "backslash"),
        ("ab/c\x00def", "control character"),
        ("ab/c\ndef", "control character"),
        ("a" * 256, "over 255 bytes"),
        ("/".join(["abcdefgh"] * 114), "over 1024"),
        ("ab/\udc80", "not valid Unicode"),
    ],
)
def test_invalid_paths(path: str, reason: str) -> None:
    with pytest.raises(InvalidBlobPath, match=re.escape(reason)):
        validate_blob_path(path)
    assert not is_blob_path(path)


def test_invalid_path_is_a_value_error_not_a_storage_error() -> None:
    with pytest.raises(ValueError, match="absolute") as raised:
        validate_blob_path("/etc/passwd")
    assert not isinstance(raised.value, StorageError)


def test_non_string_path_is_rejected() -> None:
    with pytest.raises(InvalidBlobPath, match="string"):
        validate_blob_path(b"ab/cd")  # type: ignore[arg-type]


@pytest.mark.parametrize("prefix", ["", "ab", "ab/", "ab/cd", "ab/cdef/"])
def test_valid_prefixes(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["/", "/ab", "ab//", "../", "ab/../", "a\\b", "ab/\x01"])
def test_invalid_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidBlobPath):
        validate_prefix(prefix)


@given(st.lists(st.text(alphabet="abcdef0123456789-_", min_size=1, max_size=20), min_size=1))
def test_joined_plain_segments_are_valid(segments: list[str]) -> None:
    path = "/".join(segments)
    if len(path) <= 1024:
        assert validate_blob_path(path) == path


@given(st.text(max_size=60))
def test_validation_never_accepts_an_escaping_path(path: str) -> None:
    if is_blob_path(path):
        parts = path.split("/")
        assert not path.startswith("/")
        assert all(part and not part.startswith(".") for part in parts)
        assert "\\" not in path


def test_random_blob_paths_share_one_random_directory_and_have_unique_names() -> None:
    paths = random_blob_paths(500)
    assert len(set(paths)) == 500
    assert len({path.rsplit("/", 1)[0] for path in paths}) == 1
    assert all(re.fullmatch(r"[0-9a-f]{2}/[0-9a-f]{4}/[0-9a-f]{26}", path) for path in paths)
    assert random_blob_paths(3)[0].rsplit("/", 1)[0] != paths[0].rsplit("/", 1)[0]
    assert random_blob_paths(0) == []
    # Each key is a uuid4's hex split 2/4/26 (its version and variant digits are the name's).
    assert all(uuid.UUID(hex=path.replace("/", "")).version == 4 for path in paths)


def test_random_blob_paths_draw_their_randomness_in_one_system_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One call per key (as `uuid.uuid4()` makes) hands the GIL over a thousand times a batch.
    sizes: list[int] = []
    urandom = os.urandom

    def counting_urandom(size: int) -> bytes:
        sizes.append(size)
        return urandom(size)

    monkeypatch.setattr(os, "urandom", counting_urandom)
    assert len(random_blob_paths(1000)) == 1000
    assert sizes == [16 * 1001]

"""Validating patterns match the whole value: `$` also matches before a trailing newline, so
`"<40 hex>\\n"` passed as a sha1 while the patterns were `^...$` with `.match`."""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path
from typing import Final

import click
import pytest

from workers.blob_ingest.cli import parse_duration
from workers.common.chunk_uploads import ChunkEventError, encode_headers, parse_headers
from workers.common.database import load_migrations
from workers.common.projects.slugs import is_valid_slug
from workers.gateway.schema import BadRequest, parse_bundle_request, parse_dif_request

ROOT: Final = Path(__file__).resolve().parents[2]
SHA: Final = hashlib.sha1(b"chunk").hexdigest()
SHA_NEWLINE: Final = SHA + "\n"

#: Patterns that may end in `$`, with the reason.
ANCHORED_ON_PURPOSE: Final = {
    # Upstream's MRI pattern, as docs/reference.md gives it: the custom-metric verdict stays
    # Sentry's (it parses, it validates nothing).
    ("workers/billing/custom_metrics.py", "MRI_PATTERN"),
}
#: The multipart parser's checksum is fixed with the rest of the upload path (issue 14).
PENDING_ELSEWHERE: Final = frozenset({"workers/gateway/multipart.py"})


def test_the_trailing_newline_passed_a_dollar_anchored_match() -> None:
    """Why this file exists: the old pattern accepted it, a full match does not."""
    assert re.compile(r"^[0-9a-f]{40}$").match(SHA_NEWLINE) is not None
    assert re.compile(r"[0-9a-f]{40}").fullmatch(SHA_NEWLINE) is None


# ---- blob-ingest: the sha1 header of a chunk-upload event ---------------------------------


@pytest.mark.parametrize("claimed", [SHA_NEWLINE, "\n" + SHA, SHA + "\r\n", SHA + " "])
def test_chunk_event_refuses_a_sha1_header_with_anything_around_it(claimed: str) -> None:
    headers = encode_headers(7, SHA, "identity", 1)
    headers = [(key, claimed.encode() if key == "sha1" else value) for key, value in headers]
    with pytest.raises(ChunkEventError) as error:
        parse_headers(headers)
    assert error.value.code == "invalid_checksum"


def test_chunk_event_still_takes_a_plain_sha1() -> None:
    assert parse_headers(encode_headers(7, SHA, "identity", 1)).checksum == SHA


# ---- the gateway's assemble bodies ------------------------------------------------------


def _dif_body(key: str, chunk: str) -> bytes:
    return b'{"%s": {"name": "a.so", "chunks": ["%s"]}}' % (
        key.encode("unicode_escape"),
        chunk.encode("unicode_escape"),
    )


def test_dif_assemble_refuses_a_file_checksum_with_a_trailing_newline() -> None:
    with pytest.raises(BadRequest):
        parse_dif_request(_dif_body(SHA_NEWLINE, SHA))


def test_dif_assemble_refuses_a_chunk_checksum_with_a_trailing_newline() -> None:
    with pytest.raises(BadRequest):
        parse_dif_request(_dif_body(SHA, SHA_NEWLINE))


def test_dif_assemble_takes_plain_sha1s() -> None:
    (request,) = parse_dif_request(_dif_body(SHA, SHA))
    assert (request.checksum, request.chunks) == (SHA, (SHA,))


@pytest.mark.parametrize(
    "body",
    [
        b'{"checksum": "%s\\n", "chunks": []}' % SHA.encode(),
        b'{"checksum": "%s", "chunks": ["%s\\n"]}' % (SHA.encode(), SHA.encode()),
    ],
    ids=["checksum", "chunk"],
)
def test_bundle_assemble_refuses_checksums_with_a_trailing_newline(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_bundle_request(body)


def test_bundle_assemble_takes_plain_sha1s() -> None:
    bundle = parse_bundle_request(b'{"checksum": "%s", "chunks": ["%s"]}' % ((SHA.encode(),) * 2))
    assert (bundle.file.checksum, bundle.file.chunks) == (SHA, (SHA,))


# ---- slugs, migration files, durations -----------------------------------------------------


@pytest.mark.parametrize("slug", ["acme\n", "acme\r\n", "\nacme"])
def test_a_slug_with_a_newline_is_not_valid(slug: str) -> None:
    assert is_valid_slug("acme")
    assert not is_valid_slug(slug)


def test_migration_files_are_found_by_their_whole_name() -> None:
    assert [migration.version for migration in load_migrations()][:1] == [1]


def test_a_duration_is_a_whole_number_and_unit() -> None:
    assert parse_duration("24h\n").total_seconds() == 86400  # surrounding space is trimmed
    for text in ("24h\nx", "24hours", "h"):
        with pytest.raises(click.BadParameter):
            parse_duration(text)


# ---- no pattern in workers/ ends in a bare `$` ---------------------------------------------


def _ends_in_bare_dollar(pattern: str | bytes) -> bool:
    text = pattern.decode("latin-1") if isinstance(pattern, bytes) else pattern
    if not text.endswith("$"):
        return False
    backslashes = len(text[:-1]) - len(text[:-1].rstrip("\\"))
    return backslashes % 2 == 0


def _dollar_patterns(path: Path) -> list[tuple[str, str]]:
    """(name, pattern) of each `re.<function>(<literal>, ...)` whose pattern ends in `$`; the
    name is the variable it is assigned to, or the function."""
    found = []
    tree = ast.parse(path.read_text(), filename=str(path))
    names: dict[int, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and node.value is not None:
                    names[id(node.value)] = target.id
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "re"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str | bytes)
            and _ends_in_bare_dollar(node.args[0].value)
        ):
            found.append((names.get(id(node), node.func.attr), repr(node.args[0].value)))
    return found


def test_the_scan_finds_a_dollar_anchored_pattern(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        'import re\nA = re.compile(r"^x$")\nB = re.compile(r"x\\$")\nre.match("y$", "y")\n'
    )
    assert [name for name, _ in _dollar_patterns(sample)] == ["A", "match"]


def test_no_pattern_in_workers_ends_in_a_bare_dollar() -> None:
    offenders = set()
    for path in sorted((ROOT / "workers").rglob("*.py")):
        relative = str(path.relative_to(ROOT))
        if relative in PENDING_ELSEWHERE:
            continue
        for name, pattern in _dollar_patterns(path):
            if (relative, name) not in ANCHORED_ON_PURPOSE:
                offenders.add(f"{relative}: {name} = {pattern}")
    assert not offenders, "use fullmatch without anchors: " + "; ".join(sorted(offenders))

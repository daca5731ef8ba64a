"""Decoding the JSON bodies of the assemble endpoints into typed structures; `BadRequest` →
HTTP 400 (docs/gateway.md, Assemble; the limits in docs/reference.md, Assemble).

The body is decoded by msgspec straight into `Struct`s: every value is checked against its
type as it is read, so a body that is not what sentry-cli sends is refused at its first
wrong value, before anything else of it is built (a 16 MiB array of empty objects is one
small allocation, not millions of dicts). Fields nobody reads are skipped without being
built; nesting deeper than the interpreter's recursion limit is refused.

- Checksums are a full match of 40 lowercase hexadecimal characters (no trailing newline);
- a file lists at most `MAX_CHUNKS_PER_FILE` chunks, a request at most
  `MAX_FILES_PER_REQUEST` files, a bundle at most `MAX_PROJECTS_PER_BUNDLE` projects;
- names, debug ids, versions and dists are at most `MAX_NAME_LENGTH` characters.

A request's chunk checksums are shared: the same checksum listed by many files (or many
times by one file) is one string, and the same chunk list one tuple, so what a request keeps
while it is assembled is bounded by its distinct checksums.

msgspec's error names the path of the offending value (`$[...].chunks[3]`); that path picks
one of the fixed messages below, the ones clients have always been answered.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Final, TypeVar

import msgspec

from workers.gateway.assemble_types import FileRequest
from workers.gateway.options import CHUNK_SIZE, MAX_FILE_SIZE

MAX_NAME_LENGTH: Final = 1024
MAX_FILES_PER_REQUEST: Final = 1000
#: The most chunks a file can have: the largest file cut into chunk-size slices.
MAX_CHUNKS_PER_FILE: Final = MAX_FILE_SIZE // CHUNK_SIZE
MAX_PROJECTS_PER_BUNDLE: Final = 1000
MAX_SLUG_LENGTH: Final = 50
#: Assemble bodies are lists of checksums: this is plenty.
MAX_BODY_BYTES: Final = 16 * 1024 * 1024

NOT_JSON: Final = "body is not valid JSON"
NOT_AN_OBJECT: Final = "body must be a JSON object"
TOO_MANY_FILES: Final = f"at most {MAX_FILES_PER_REQUEST} files per request"
FILE_NOT_AN_OBJECT: Final = "each file must be a JSON object"
NO_NAME: Final = "each file needs a name"
BAD_CHUNKS: Final = f"chunks must be a list of at most {MAX_CHUNKS_PER_FILE} sha1s"
BAD_PROJECTS: Final = "projects must be a list of project slugs"


def _not_a_sha1(what: str) -> str:
    return f"{what} must be a sha1: 40 lowercase hexadecimal characters"


def _not_text(what: str) -> str:
    return f"{what} must be a string of at most {MAX_NAME_LENGTH} characters"


#: 40 characters; that they are lowercase hexadecimal is checked after decoding, for a whole
#: chunk list at once (`_all_hex`): a regex per checksum costs four times the whole decode.
Sha1 = Annotated[str, msgspec.Meta(min_length=40, max_length=40)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_NAME_LENGTH)]
Chunks = Annotated[tuple[Sha1, ...], msgspec.Meta(max_length=MAX_CHUNKS_PER_FILE)]
Slug = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_SLUG_LENGTH)]


class DifFile(msgspec.Struct, frozen=True, gc=False):
    """One value of the debug-file body `{"<sha1>": {"name", "chunks", "debug_id"}}`."""

    chunks: Chunks
    name: Text | None = None
    debug_id: Text | None = None


class BundleBody(msgspec.Struct, frozen=True, gc=False):
    """The artifact-bundle body `{"checksum", "chunks", "projects", "version", "dist"}`."""

    checksum: Sha1
    chunks: Chunks
    projects: Annotated[tuple[Slug, ...], msgspec.Meta(max_length=MAX_PROJECTS_PER_BUNDLE)] = ()
    version: Text | None = None
    dist: Text | None = None


DifBody = Annotated[dict[Sha1, DifFile], msgspec.Meta(max_length=MAX_FILES_PER_REQUEST)]

_DIF_DECODER: Final = msgspec.json.Decoder(DifBody)
_BUNDLE_DECODER: Final = msgspec.json.Decoder(BundleBody)


class BadRequest(ValueError):
    pass


@dataclass(frozen=True)
class BundleRequest:
    file: FileRequest
    projects: tuple[str, ...]
    version: str | None
    dist: str | None


_HEX_DIGITS: Final = b"0123456789abcdef"


def _all_hex(checksums: Iterable[str]) -> bool:
    """Every string only lowercase hexadecimal digits (with their length checked, a full
    match of `[0-9a-f]{40}`: no newline, no other character anywhere)."""
    joined = "".join(checksums)
    return joined.isascii() and not joined.encode("ascii").translate(None, _HEX_DIGITS)


class _Shared:
    """One string per distinct checksum and one tuple per distinct chunk list of a request."""

    def __init__(self) -> None:
        self.__checksums: dict[str, str] = {}
        self.__lists: dict[tuple[str, ...], tuple[str, ...]] = {}

    def chunks(self, chunks: tuple[str, ...]) -> tuple[str, ...]:
        known = self.__lists.get(chunks)
        if known is not None:
            return known
        if not _all_hex(chunks):
            raise BadRequest(_not_a_sha1("each chunk"))
        table = self.__checksums
        shared = tuple([table.setdefault(checksum, checksum) for checksum in chunks])
        self.__lists[shared] = shared
        return shared


_INDEX: Final = re.compile(r"\[\d+\]")
_MISSING: Final = re.compile(r"^Object missing required field `(\w+)`")


def _where(error: msgspec.ValidationError) -> tuple[str, str]:
    """(msgspec's message without the path, the path with indices as `[]`: `$` for the
    body itself, `$[...].chunks[]` for a chunk of a file, `key` in `$` for a file's key)."""
    text = str(error)
    message, found, path = text.rpartition(" - at `")
    if not found:
        message, path = text, "$"
    path = path.removesuffix("`")
    missing = _MISSING.match(message)
    if missing is not None:
        # A missing field is reported at its object: name the field itself.
        path = f"{path}.{missing.group(1)}"
    return message, _INDEX.sub("[]", path)


_DIF_ERRORS: Final = {
    "key` in `$": _not_a_sha1("each key"),
    "$[...]": FILE_NOT_AN_OBJECT,
    "$[...].chunks": BAD_CHUNKS,
    "$[...].chunks[]": _not_a_sha1("each chunk"),
    "$[...].name": _not_text("name"),
    "$[...].debug_id": _not_text("debug_id"),
}

_BUNDLE_ERRORS: Final = {
    "$.checksum": _not_a_sha1("checksum"),
    "$.chunks": BAD_CHUNKS,
    "$.chunks[]": _not_a_sha1("each chunk"),
    "$.projects": BAD_PROJECTS,
    "$.projects[]": BAD_PROJECTS,
    "$.version": _not_text("version"),
    "$.dist": _not_text("dist"),
}


T = TypeVar("T")
#: What a body is read into: bytes, or the bytearray it was received in (never copied).
Body = bytes | bytearray | memoryview


def _decode(
    decoder: msgspec.json.Decoder[T],
    raw: Body,
    errors: dict[str, str],
    at_top: Callable[[str], str],
) -> T:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as error:
        message, path = _where(error)
        if path == "$":
            raise BadRequest(at_top(message)) from None
        raise BadRequest(errors.get(path, f"invalid assemble request: {error}")) from None
    except (msgspec.DecodeError, RecursionError):
        raise BadRequest(NOT_JSON) from None


def _dif_top(message: str) -> str:
    return TOO_MANY_FILES if "of length" in message else NOT_AN_OBJECT


def _bundle_top(message: str) -> str:
    return NOT_AN_OBJECT


def parse_dif_request(raw: Body) -> list[FileRequest]:
    """`{"<sha1>": {"name": ..., "chunks": [...], "debug_id": ...}, ...}`."""
    body = _decode(_DIF_DECODER, raw, _DIF_ERRORS, _dif_top)
    if not _all_hex(body):
        raise BadRequest(_not_a_sha1("each key"))
    shared = _Shared()
    files: list[FileRequest] = []
    for checksum, entry in body.items():
        if not entry.name:
            raise BadRequest(NO_NAME)
        files.append(
            FileRequest(
                checksum=checksum,
                name=entry.name,
                chunks=shared.chunks(entry.chunks),
                debug_id=entry.debug_id,
            )
        )
    return files


def parse_bundle_request(raw: Body) -> BundleRequest:
    """`{"checksum": ..., "chunks": [...], "projects": [...], "version": ..., "dist": ...}`."""
    body = _decode(_BUNDLE_DECODER, raw, _BUNDLE_ERRORS, _bundle_top)
    if not _all_hex((body.checksum,)):
        raise BadRequest(_not_a_sha1("checksum"))
    return BundleRequest(
        file=FileRequest(
            checksum=body.checksum,
            name="artifact-bundle.zip",
            chunks=_Shared().chunks(body.chunks),
        ),
        projects=tuple(dict.fromkeys(body.projects)),
        version=body.version,
        dist=body.dist,
    )

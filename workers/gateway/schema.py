"""Validating the JSON bodies of the assemble endpoints; `BadRequest` → HTTP 400."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

import orjson

from workers.gateway.assemble import FileRequest
from workers.gateway.options import CHUNK_SIZE, MAX_FILE_SIZE

_CHECKSUM = re.compile(r"[0-9a-f]{40}")
MAX_NAME_LENGTH: Final = 1024
MAX_FILES_PER_REQUEST: Final = 1000
#: The most chunks a file can have: the largest file cut into chunk-size slices.
MAX_CHUNKS_PER_FILE: Final = MAX_FILE_SIZE // CHUNK_SIZE
#: Assemble bodies are lists of checksums: this is plenty.
MAX_BODY_BYTES: Final = 16 * 1024 * 1024


class BadRequest(ValueError):
    pass


@dataclass(frozen=True)
class BundleRequest:
    file: FileRequest
    projects: tuple[str, ...]
    version: str | None
    dist: str | None


def _object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _checksum(value: object, what: str) -> str:
    if not isinstance(value, str) or _CHECKSUM.fullmatch(value) is None:
        raise BadRequest(f"{what} must be a sha1: 40 lowercase hexadecimal characters")
    return value


def _chunks(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_CHUNKS_PER_FILE:
        raise BadRequest(f"chunks must be a list of at most {MAX_CHUNKS_PER_FILE} sha1s")
    return tuple(_checksum(item, "each chunk") for item in value)


def _optional_text(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_NAME_LENGTH:
        raise BadRequest(f"{what} must be a string of at most {MAX_NAME_LENGTH} characters")
    return value


def parse_dif_request(raw: bytes) -> list[FileRequest]:
    """`{"<sha1>": {"name": ..., "chunks": [...], "debug_id": ...}, ...}`."""
    body = _object(raw)
    if len(body) > MAX_FILES_PER_REQUEST:
        raise BadRequest(f"at most {MAX_FILES_PER_REQUEST} files per request")
    files: list[FileRequest] = []
    for checksum, entry in body.items():
        _checksum(checksum, "each key")
        if not isinstance(entry, dict):
            raise BadRequest("each file must be a JSON object")
        name = _optional_text(entry.get("name"), "name")
        if not name:
            raise BadRequest("each file needs a name")
        files.append(
            FileRequest(
                checksum=checksum,
                name=name,
                chunks=_chunks(entry.get("chunks")),
                debug_id=_optional_text(entry.get("debug_id"), "debug_id"),
            )
        )
    return files


def parse_bundle_request(raw: bytes) -> BundleRequest:
    """`{"checksum": ..., "chunks": [...], "projects": [...], "version": ..., "dist": ...}`."""
    body = _object(raw)
    projects = body.get("projects", [])
    if not isinstance(projects, list) or not all(
        isinstance(slug, str) and 0 < len(slug) <= 50 for slug in projects
    ):
        raise BadRequest("projects must be a list of project slugs")
    checksum = _checksum(body.get("checksum"), "checksum")
    return BundleRequest(
        file=FileRequest(
            checksum=checksum, name="artifact-bundle.zip", chunks=_chunks(body.get("chunks"))
        ),
        projects=tuple(dict.fromkeys(projects)),
        version=_optional_text(body.get("version"), "version"),
        dist=_optional_text(body.get("dist"), "dist"),
    )

"""Inspecting an assembled file: a bundle is read through its stored chunks (its directory and
manifest only), a debug file from its scratch file; refusals keep the reader's detail,
storage failures are not file errors (docs/assemble.md, The assemble worker)."""

from __future__ import annotations

import os
import uuid
import zipfile
from pathlib import Path

import pytest

from tests.support.artifact_bundle_builders import (
    BUNDLE_DEBUG_ID,
    JS_FILES,
    js_manifest,
    write_bundle,
)
from workers.assemble.chunked_file import ChunkSizeMismatch, StoredChunk
from workers.assemble.contents import BadDebugFile, BundleContents, DebugObject
from workers.assemble.inspect_file import FileInspector
from workers.assemble.outcomes import (
    INTERNAL_ERROR,
    NOT_ALL_CHUNKS,
    AssembledBytes,
    DebugFileContents,
    Refused,
)
from workers.assemble.tasks import AssembleTask
from workers.common.assemble_requests import AssembleKind
from workers.common.storage import BlobNotFoundError, StorageError

#: Chunks as large as the zip's end records may be (a 64 KiB comment): the end is read from
#: the last 64 KiB, two or three chunks here, the last one of 8 MiB in the worker.
CHUNK_BYTES = 64 * 1024


def task(kind: AssembleKind) -> AssembleTask:
    return AssembleTask(
        id=1, organization_id=2, project_id=3, kind=kind, checksum="0" * 40, name="file",
        chunks=(), debug_id=None, projects=(), release=None, dist=None, attempts=1,
    )  # fmt: skip


class StoredBundle:
    """A bundle with a large file between its manifest and its directory, in chunks."""

    def __init__(self, tmp_path: Path) -> None:
        manifest = js_manifest()
        files = {**JS_FILES, "files/_/_/main.js": os.urandom(20 * CHUNK_BYTES)}
        path = write_bundle(tmp_path / "bundle.zip", manifest, files, zipfile.ZIP_STORED)
        whole = path.read_bytes()
        self.data = {
            f"chunk-{index}": whole[at : at + CHUNK_BYTES]
            for index, at in enumerate(range(0, len(whole), CHUNK_BYTES))
        }
        self.fetched: list[str] = []
        self.fail: dict[str, StorageError] = {}
        self.assembled = AssembledBytes(
            len(whole), tuple(StoredChunk(path, len(data)) for path, data in self.data.items())
        )

    def fetch(self, path: str) -> bytes:
        self.fetched.append(path)
        if path in self.fail:
            raise self.fail[path]
        return self.data[path]


def test_a_bundle_is_read_through_its_chunks_directory_and_manifest_only(tmp_path: Path) -> None:
    stored = StoredBundle(tmp_path)
    contents = FileInspector(stored.fetch)(task("artifact_bundle"), stored.assembled)
    assert isinstance(contents, BundleContents)
    assert contents.bundle_id == uuid.UUID(BUNDLE_DEBUG_ID)
    assert len(contents.artifacts) == 4
    # The manifest's chunk, the end's, nothing of main.js between them.
    assert len(stored.data) > 20
    assert set(stored.fetched) <= {"chunk-0", *list(stored.data)[-3:]}


def test_a_chunk_gone_from_storage_ends_the_bundle_as_in_the_read_step(tmp_path: Path) -> None:
    stored = StoredBundle(tmp_path)
    last = list(stored.data)[-1]
    stored.fail[last] = BlobNotFoundError(last)
    assert FileInspector(stored.fetch)(task("artifact_bundle"), stored.assembled) == Refused(
        NOT_ALL_CHUNKS
    )


def test_storage_failures_are_raised_not_file_errors(tmp_path: Path) -> None:
    stored = StoredBundle(tmp_path)
    last = list(stored.data)[-1]
    stored.fail[last] = StorageError("get", last, "connection reset")
    with pytest.raises(StorageError, match="connection reset"):
        FileInspector(stored.fetch)(task("artifact_bundle"), stored.assembled)
    stored.fail.clear()
    stored.data[last] += b"!"
    with pytest.raises(ChunkSizeMismatch):
        FileInspector(stored.fetch)(task("artifact_bundle"), stored.assembled)


def test_a_reader_that_fails_unexpectedly_ends_in_internal_error(tmp_path: Path) -> None:
    stored = StoredBundle(tmp_path)

    def broken(bundle: object) -> BundleContents:
        raise KeyError("bug")

    inspect = FileInspector(stored.fetch, read_bundle=broken)
    assert inspect(task("artifact_bundle"), stored.assembled) == Refused(INTERNAL_ERROR)


def test_a_debug_file_is_read_from_its_scratch_file(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.write_bytes(b"ELF?")
    seen: list[tuple[Path, str]] = []
    found = DebugObject("id", None, "x86_64", "file", "elf", "dbg", ("debug",))

    def detect(path: Path, name: str) -> list[DebugObject]:
        seen.append((path, name))
        return [found]

    def refuse(path: Path, name: str) -> list[DebugObject]:
        raise BadDebugFile("invalid debug file")

    assembled = AssembledBytes(4, (), scratch)
    never_fetched = StoredBundle(tmp_path).fetch
    assert FileInspector(never_fetched, detect)(task("dif"), assembled) == DebugFileContents(
        (found,)
    )
    assert seen == [(scratch, "file")]
    assert FileInspector(never_fetched, refuse)(task("dif"), assembled) == Refused(
        "invalid debug file"
    )

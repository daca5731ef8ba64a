"""What an assembled file turned out to hold: the objects of a debug information file, or the
artifacts of a source-map bundle (docs/assemble.md). Produced by `debug_files` and
`artifact_bundles`, stored by the worker."""

from __future__ import annotations

import uuid
from dataclasses import dataclass


class BadFile(Exception):
    """The file cannot be accepted; `detail` is the answer's `detail` (upstream's words).

    `reason` is the specific cause, for logs and dead letters: upstream answers several
    causes with one detail ("the bundle is invalid"); it is `detail` when that says it all.
    """

    def __init__(self, detail: str, reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = detail if reason is None else reason


class BadDebugFile(BadFile):
    """Not a debug information file, or a corrupt one."""


class BadArtifactBundle(BadFile):
    """Not a zip, or a bundle whose manifest is missing or invalid."""


@dataclass(frozen=True)
class DebugObject:
    """One object of a debug information file (a fat Mach-O has several)."""

    debug_id: str
    code_id: str | None
    #: symbolic's arch name (`x86_64`, `arm64`...): upstream's `cpu_name`.
    cpu_name: str
    #: The uploaded file's name (upstream's `object_name`).
    object_name: str
    #: elf, macho, pe, pdb, sourcebundle, wasm, breakpad, portablepdb...
    file_format: str
    #: exe, dbg, lib, ... (symbolic's ObjectKind)
    object_kind: str
    #: symtab, debug, unwind, sources: sorted.
    features: tuple[str, ...]


@dataclass(frozen=True)
class BundleArtifact:
    """One file of an artifact bundle, as its manifest lists it."""

    #: The file's path in the zip (`files/_/_/main.js`).
    path: str
    url: str
    #: minified_source, source_map, ... as the manifest says.
    file_type: str
    debug_id: uuid.UUID | None
    size: int


@dataclass(frozen=True)
class BundleContents:
    #: The manifest's bundle `debug_id`, if any.
    bundle_id: uuid.UUID | None
    artifacts: tuple[BundleArtifact, ...]
    #: (debug id, source file type) pairs to index, as upstream's DebugIdArtifactBundle.
    debug_ids: frozenset[tuple[uuid.UUID, str]]
    #: Release and dist named in the manifest (the request's take precedence).
    release: str | None = None
    dist: str | None = None

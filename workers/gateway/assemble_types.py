"""What the assemble endpoints work with: a request's files, where they belong, what is
stored about them, and the answer for each (docs/reference.md, Assemble)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from workers.assemble.contents import DebugObject
from workers.common.assemble_requests import AssembleState

State = Literal["not_found", "created", "assembling", "ok", "error"]
Kind = Literal["dif", "artifact_bundle"]


@dataclass(frozen=True)
class FileRequest:
    checksum: str
    name: str
    chunks: tuple[str, ...]
    debug_id: str | None = None


@dataclass(frozen=True)
class Target:
    """Where a file belongs: a project's debug files, or the organization's bundles."""

    organization_id: int
    kind: Kind
    project_id: int | None = None
    projects: tuple[str, ...] = ()
    release: str | None = None
    dist: str | None = None


@dataclass(frozen=True)
class StoredDebugObject(DebugObject):
    """A `debug_files` row: one object of a debug information file, as the assemble worker
    recorded it, with the row's id."""

    id: int


@dataclass(frozen=True)
class StoredFile:
    """An `assembled_files` row, with its first debug object when it has any (files
    assembled before the assemble worker have none)."""

    id: int
    name: str
    checksum: str
    size: int
    date_added: datetime
    debug_id: str | None
    cpu_name: str | None
    debug_object: StoredDebugObject | None = None


@dataclass(frozen=True)
class TaskRow:
    """An `assemble_tasks` row: its state, and whether it may be taken back by a request
    that lists its chunks: an `error` older than the status cache (upstream has forgotten
    it), or a `created` whose request was enqueued as long ago (it was lost)."""

    id: int
    state: AssembleState
    detail: str | None
    retryable: bool


@dataclass(frozen=True)
class AssembleResult:
    state: State
    missing_chunks: tuple[str, ...] = ()
    detail: str | None = None
    file: StoredFile | None = None
    #: This answer enqueued the file for the assemble worker.
    enqueued: bool = False

"""The files of `workers files list`, and the ids both commands take (docs/blob-lifecycle.md,
Files commands).

A file is known by its assemble task (`assemble_tasks`, every file the worker handled) and
by the file assembled from it (`assembled_files`); the two share the key (organization,
kind, project, checksum). Files assembled before the worker have no task. A file's id is its
task's id, `N`, or `file:N` (the `assembled_files` id) for a file without a task.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import psycopg

#: The commands' kind names and the stored ones.
STORED_KINDS: Final = {"debug": "dif", "bundle": "artifact_bundle"}
SHOWN_KINDS: Final = {stored: shown for shown, stored in STORED_KINDS.items()}

_FILE_ID: Final = re.compile(r"(?P<file>file:)?(?P<number>[1-9][0-9]{0,18})")


class FileNotFound(LookupError):
    """No file has the id; the message says which."""


@dataclass(frozen=True)
class FileId:
    """`N` (an assemble task) or `file:N` (an assembled file without a task)."""

    task_id: int | None = None
    file_id: int | None = None

    @classmethod
    def parse(cls, text: str) -> FileId:
        match = _FILE_ID.fullmatch(text.strip())
        if match is None or int(match["number"]) >= 2**63:
            raise ValueError(
                f"{text!r}: use a file id as `workers files list` shows it: N or file:N"
            )
        number = int(match["number"])
        return cls(file_id=number) if match["file"] else cls(task_id=number)

    def __str__(self) -> str:
        return f"file:{self.file_id}" if self.task_id is None else str(self.task_id)


@dataclass(frozen=True)
class FileSummary:
    """One line of `workers files list`."""

    id: str
    kind: str
    name: str
    state: str
    detail: str | None
    #: None until the file is assembled.
    size: int | None
    #: The debug ids of a debug file's objects (or the one the upload named), or the bundle id.
    ids: tuple[str, ...]
    #: Objects of a debug file, artifacts of a bundle; None until assembled.
    objects: int | None
    date_added: datetime


#: A task and the file assembled from it, as aliases `t` and `f`.
SAME_FILE: Final = (
    "f.organization_id = t.organization_id AND f.kind = t.kind "
    "AND coalesce(f.project_id, 0) = coalesce(t.project_id, 0) AND f.checksum = t.checksum"
)
_OBJECTS: Final = (
    "CASE WHEN f.id IS NULL THEN NULL WHEN f.kind = 'dif' THEN "
    "(SELECT nullif(count(*), 0) FROM debug_files d WHERE d.assembled_file_id = f.id) "
    "ELSE (SELECT a.artifact_count FROM artifact_bundles a WHERE a.assembled_file_id = f.id) END"
)
_IDS: Final = (
    "CASE WHEN f.kind = 'artifact_bundle' THEN "
    "(SELECT array_agg(a.bundle_id::text) FROM artifact_bundles a WHERE a.assembled_file_id = f.id)"
    " ELSE (SELECT array_agg(DISTINCT d.debug_id ORDER BY d.debug_id) FROM debug_files d "
    "WHERE d.assembled_file_id = f.id) END"
)
_LIST: Final = (
    f"SELECT t.id::text, t.kind, t.name, t.state, t.detail, f.size, "
    f"coalesce({_IDS}, array_remove(ARRAY[t.debug_id], NULL)), {_OBJECTS}, t.date_added "
    f"FROM assemble_tasks t LEFT JOIN assembled_files f ON {SAME_FILE} "
    "WHERE t.organization_id = %(organization)s AND t.kind = ANY(%(kinds)s) "
    "UNION ALL "
    f"SELECT 'file:' || f.id, f.kind, f.name, 'ok', NULL, f.size, "
    f"coalesce({_IDS}, array_remove(ARRAY[f.debug_id], NULL)), {_OBJECTS}, f.date_added "
    "FROM assembled_files f "
    "WHERE f.organization_id = %(organization)s AND f.kind = ANY(%(kinds)s) "
    f"AND NOT EXISTS (SELECT 1 FROM assemble_tasks t WHERE {SAME_FILE}) "
    "ORDER BY 9 DESC, 1"
)


def list_files(
    connection: psycopg.Connection, organization_id: int, kind: str | None = None
) -> list[FileSummary]:
    """The organization's files, newest first; `kind` is `debug` or `bundle`."""
    kinds = [STORED_KINDS[kind]] if kind else list(STORED_KINDS.values())
    rows = connection.execute(_LIST, {"organization": organization_id, "kinds": kinds})
    return [
        FileSummary(
            id=file_id,
            kind=SHOWN_KINDS[stored_kind],
            name=name,
            state=state,
            detail=detail,
            size=size,
            ids=tuple(ids or ()),
            objects=objects,
            date_added=date_added,
        )
        for file_id, stored_kind, name, state, detail, size, ids, objects, date_added in rows
    ]

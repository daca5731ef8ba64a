"""One file as `workers files show` prints it (docs/blob-lifecycle.md, Files commands): its
task's state, what the worker found in it (debug objects or bundle index) and its chunks'
blobs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import psycopg

from workers.assemble.contents import BundleArtifact, DebugObject
from workers.files.queries import SAME_FILE, SHOWN_KINDS, FileId, FileNotFound


@dataclass(frozen=True)
class Chunk:
    """One chunk of a file, in order, and the blob that holds it (None when missing)."""

    checksum: str
    blob_id: int | None
    size: int | None
    path: str | None


@dataclass(frozen=True)
class Bundle:
    bundle_id: uuid.UUID
    artifact_count: int
    #: (release, dist); dist is '' when the upload named none.
    releases: tuple[tuple[str, str], ...]
    #: Slugs of the projects the bundle belongs to.
    projects: tuple[str, ...]
    artifacts: tuple[BundleArtifact, ...]


@dataclass(frozen=True)
class FileDetails:
    id: str
    kind: str
    name: str
    checksum: str
    state: str
    detail: str | None
    #: None until the file is assembled.
    size: int | None
    organization: str
    #: The project of a debug file (slug), None for a bundle.
    project: str | None
    #: The projects, release and dist the upload named (bundles).
    projects: tuple[str, ...]
    release: str | None
    dist: str | None
    date_added: datetime
    #: The worker's starts (0 for a file without a task).
    attempts: int
    objects: tuple[DebugObject, ...]
    bundle: Bundle | None
    chunks: tuple[Chunk, ...]


_RESOLVE_TASK: Final = (
    "SELECT t.id, f.id FROM assemble_tasks t LEFT JOIN assembled_files f "
    f"ON {SAME_FILE} WHERE t.id = %s"
)
_RESOLVE_FILE: Final = (
    "SELECT t.id, f.id FROM assembled_files f LEFT JOIN assemble_tasks t "
    f"ON {SAME_FILE} WHERE f.id = %s"
)
_FILE: Final = (
    "SELECT coalesce(t.kind, f.kind), coalesce(t.name, f.name), coalesce(f.checksum, t.checksum), "
    "coalesce(t.state, 'ok'), t.detail, f.size, o.slug, p.slug, "
    "coalesce(t.projects, f.projects), coalesce(t.release, f.release), coalesce(t.dist, f.dist), "
    "coalesce(t.date_added, f.date_added), coalesce(t.attempts, 0), "
    "coalesce(f.chunks, t.chunks) "
    "FROM (SELECT %s::bigint AS task_id, %s::bigint AS file_id) wanted "
    "LEFT JOIN assemble_tasks t ON t.id = wanted.task_id "
    "LEFT JOIN assembled_files f ON f.id = wanted.file_id "
    "JOIN organizations o ON o.id = coalesce(t.organization_id, f.organization_id) "
    "LEFT JOIN projects p ON p.id = coalesce(t.project_id, f.project_id)"
)
_OBJECTS: Final = (
    "SELECT debug_id, code_id, cpu_name, object_name, file_format, object_kind, features "
    "FROM debug_files WHERE assembled_file_id = %s ORDER BY cpu_name, debug_id"
)
_BUNDLE: Final = (
    "SELECT id, bundle_id, artifact_count FROM artifact_bundles WHERE assembled_file_id = %s"
)
_RELEASES: Final = (
    "SELECT release_name, dist_name FROM release_artifact_bundles "
    "WHERE artifact_bundle_id = %s ORDER BY release_name, dist_name"
)
_BUNDLE_PROJECTS: Final = (
    "SELECT p.slug FROM project_artifact_bundles pa JOIN projects p ON p.id = pa.project_id "
    "WHERE pa.artifact_bundle_id = %s ORDER BY p.slug"
)
_INDEX: Final = (
    "SELECT path, url, file_type, debug_id, size FROM artifact_bundle_index "
    "WHERE artifact_bundle_id = %s ORDER BY path"
)
_CHUNKS: Final = (
    "SELECT c.checksum, b.id, b.size, b.path "
    "FROM unnest(%s::char(40)[]) WITH ORDINALITY AS c(checksum, position) "
    "LEFT JOIN blobs b ON b.checksum = c.checksum ORDER BY c.position"
)


def _resolve(connection: psycopg.Connection, wanted: FileId) -> tuple[int | None, int | None]:
    """(task id, assembled file id) of `wanted`; FileNotFound when neither exists."""
    query, number = (
        (_RESOLVE_TASK, wanted.task_id)
        if wanted.task_id is not None
        else (_RESOLVE_FILE, wanted.file_id)
    )
    row = connection.execute(query, (number,)).fetchone()
    if row is None:
        raise FileNotFound(f"no file with id {wanted}")
    return row[0], row[1]


def _bundle(connection: psycopg.Connection, file_id: int) -> Bundle | None:
    row = connection.execute(_BUNDLE, (file_id,)).fetchone()
    if row is None:
        return None
    bundle_row_id, bundle_id, artifact_count = row
    releases = connection.execute(_RELEASES, (bundle_row_id,)).fetchall()
    projects = connection.execute(_BUNDLE_PROJECTS, (bundle_row_id,)).fetchall()
    index = connection.execute(_INDEX, (bundle_row_id,)).fetchall()
    return Bundle(
        bundle_id=bundle_id,
        artifact_count=artifact_count,
        releases=tuple((release, dist) for release, dist in releases),
        projects=tuple(slug for (slug,) in projects),
        artifacts=tuple(
            BundleArtifact(path=path, url=url, file_type=file_type, debug_id=debug_id, size=size)
            for path, url, file_type, debug_id, size in index
        ),
    )


def _objects(connection: psycopg.Connection, file_id: int) -> tuple[DebugObject, ...]:
    return tuple(
        DebugObject(
            debug_id=debug_id,
            code_id=code_id,
            cpu_name=cpu_name,
            object_name=object_name,
            file_format=file_format,
            object_kind=object_kind,
            features=tuple(features),
        )
        for debug_id, code_id, cpu_name, object_name, file_format, object_kind, features in (
            connection.execute(_OBJECTS, (file_id,))
        )
    )


def _chunks(connection: psycopg.Connection, checksums: list[str]) -> tuple[Chunk, ...]:
    return tuple(
        Chunk(checksum.strip(), blob_id, size, path)
        for checksum, blob_id, size, path in connection.execute(_CHUNKS, (checksums,))
    )


def show_file(connection: psycopg.Connection, wanted: FileId) -> FileDetails:
    """Everything known about one file; FileNotFound when no file has the id."""
    task_id, file_id = _resolve(connection, wanted)
    row = connection.execute(_FILE, (task_id, file_id)).fetchone()
    if row is None:
        raise FileNotFound(f"no file with id {wanted}")  # deleted since _resolve
    (kind, name, checksum, state, detail, size, organization, project) = row[:8]
    (projects, release, dist, date_added, attempts, chunks) = row[8:]
    return FileDetails(
        id=str(FileId(task_id, file_id)),
        kind=SHOWN_KINDS[kind],
        name=name,
        checksum=checksum.strip(),
        state=state,
        detail=detail,
        size=size,
        organization=organization,
        project=project,
        projects=tuple(projects),
        release=release,
        dist=dist,
        date_added=date_added,
        attempts=attempts,
        objects=_objects(connection, file_id) if file_id is not None else (),
        bundle=_bundle(connection, file_id) if file_id is not None else None,
        chunks=_chunks(connection, chunks),
    )

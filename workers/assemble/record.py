"""Recording what an assemble came to, in one PostgreSQL transaction (docs/assemble.md, States).

An `ok` file: its `assembled_files` row, what it holds (`debug_files` rows, or the bundle's
`artifact_bundles` row with its projects, release, debug ids and index), its chunks'
timestamps refreshed, and the task `ok` with the file's id. An `error` file: the task with
its detail. Every insert is `ON CONFLICT DO NOTHING` on the tables' unique keys and an
existing row is reused, so recording a file again (a worker that died after the commit but
before its offset was committed) changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import psycopg
from psycopg_pool import ConnectionPool

from workers.assemble.contents import BundleContents
from workers.assemble.outcomes import AssembledBytes, DebugFileContents, FileContents
from workers.assemble.tasks import AssembleTask
from workers.common.blob_lifecycle import refresh_blob_timestamps


class TaskRecorder:
    def __init__(self, pool: ConnectionPool) -> None:
        self.__pool = pool

    def ok(self, task: AssembleTask, assembled: AssembledBytes, contents: FileContents) -> int:
        """Records the file and its contents; returns the `assembled_files` id."""
        with self.__pool.connection() as connection, connection.transaction():
            file_id = _assembled_file(connection, task, assembled, contents)
            if isinstance(contents, DebugFileContents):
                _debug_files(connection, task, file_id, contents)
            else:
                _artifact_bundle(connection, task, file_id, contents)
            refresh_chunk_timestamps(connection, task.chunks)
            connection.execute(
                "UPDATE assemble_tasks SET state = 'ok', detail = NULL, assembled_file_id = %s, "
                "date_updated = now() WHERE id = %s",
                (file_id, task.id),
            )
        return file_id

    def error(self, task: AssembleTask, detail: str) -> None:
        with self.__pool.connection() as connection:
            connection.execute(
                "UPDATE assemble_tasks SET state = 'error', detail = %s, date_updated = now() "
                "WHERE id = %s",
                (detail, task.id),
            )


def refresh_chunk_timestamps(connection: psycopg.Connection, chunks: Sequence[str]) -> None:
    """The blob lifecycle's refresh (workers/common/blob_lifecycle.py) of a file's chunks."""
    refresh_blob_timestamps(connection, sorted(set(chunks)))


def _assembled_file(
    connection: psycopg.Connection,
    task: AssembleTask,
    assembled: AssembledBytes,
    contents: FileContents,
) -> int:
    debug_id, cpu_name = task.debug_id, None
    if isinstance(contents, DebugFileContents) and contents.objects:
        debug_id = debug_id or contents.objects[0].debug_id
        cpu_name = contents.objects[0].cpu_name
    release, dist = _release(task, contents)
    row = connection.execute(
        "INSERT INTO assembled_files (organization_id, project_id, kind, name, checksum, "
        "chunks, size, debug_id, cpu_name, projects, release, dist) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT DO NOTHING RETURNING id",
        (
            task.organization_id,
            task.project_id,
            task.kind,
            task.name,
            task.checksum,
            list(task.chunks),
            assembled.size,
            debug_id,
            cpu_name,
            list(task.projects),
            release,
            dist,
        ),
    ).fetchone()
    if row is None:
        row = connection.execute(
            "SELECT id FROM assembled_files WHERE organization_id = %s AND kind = %s "
            "AND coalesce(project_id, 0) = %s AND checksum = %s",
            (task.organization_id, task.kind, task.project_id or 0, task.checksum),
        ).fetchone()
    assert row is not None, "assembled_files conflicted with a row that is not there"
    return int(row[0])


def _release(task: AssembleTask, contents: FileContents) -> tuple[str | None, str | None]:
    """The request's release and dist, else the bundle manifest's."""
    if isinstance(contents, BundleContents):
        return task.release or contents.release, task.dist or contents.dist
    return task.release, task.dist


def _debug_files(
    connection: psycopg.Connection, task: AssembleTask, file_id: int, contents: DebugFileContents
) -> None:
    assert task.project_id is not None, "a debug file's task names its project"
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO debug_files (assembled_file_id, project_id, debug_id, code_id, "
            "cpu_name, object_name, file_format, object_kind, features) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [
                (
                    file_id,
                    task.project_id,
                    item.debug_id,
                    item.code_id,
                    item.cpu_name,
                    item.object_name,
                    item.file_format,
                    item.object_kind,
                    sorted(item.features),
                )
                for item in contents.objects
            ],
        )


def _artifact_bundle(
    connection: psycopg.Connection, task: AssembleTask, file_id: int, contents: BundleContents
) -> None:
    row = connection.execute(
        "INSERT INTO artifact_bundles (organization_id, assembled_file_id, bundle_id, "
        "artifact_count) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (assembled_file_id) DO NOTHING RETURNING id",
        (
            task.organization_id,
            file_id,
            contents.bundle_id or uuid.uuid4(),
            len(contents.artifacts),
        ),
    ).fetchone()
    if row is None:
        row = connection.execute(
            "SELECT id FROM artifact_bundles WHERE assembled_file_id = %s", (file_id,)
        ).fetchone()
    assert row is not None
    bundle_id = int(row[0])
    # Slugs of projects the organization does not have are ignored, as upstream does.
    connection.execute(
        "INSERT INTO project_artifact_bundles (artifact_bundle_id, project_id) "
        "SELECT %s, id FROM projects WHERE organization_id = %s AND lower(slug) = ANY(%s) "
        "ON CONFLICT DO NOTHING",
        (bundle_id, task.organization_id, [slug.lower() for slug in task.projects]),
    )
    release, dist = _release(task, contents)
    if release:
        connection.execute(
            "INSERT INTO release_artifact_bundles (artifact_bundle_id, release_name, dist_name) "
            "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (bundle_id, release, dist or ""),
        )
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO debug_id_artifact_bundles (artifact_bundle_id, debug_id, "
            "source_file_type) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            [(bundle_id, debug_id, kind) for debug_id, kind in sorted(contents.debug_ids)],
        )
        cursor.executemany(
            "INSERT INTO artifact_bundle_index (artifact_bundle_id, path, url, file_type, "
            "debug_id, size) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [
                (bundle_id, item.path, item.url, item.file_type, item.debug_id, item.size)
                for item in contents.artifacts
            ],
        )

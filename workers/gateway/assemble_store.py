"""The PostgreSQL side of the assemble endpoints: `assemble_tasks`, `assembled_files` with
their `debug_files`, and the blobs an organization owns (docs/reference.md, Assemble and
Blob store; the tables: migrations 0004 and 0006).

Every lookup covers a request's distinct checksums at once, in batches of `LOOKUP_BATCH`;
`claim` inserts (or takes back) the task rows of a request's files in one pipeline.

A task is taken back when upstream would have forgotten its status (it forgets after the
status cache's 10 minutes, and the client's next assemble starts the work again): an `error`
that old, and a `created` that old, whose request was lost between the row's insert and
Kafka (docs/gateway.md, Assemble).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, LiteralString

from psycopg_pool import AsyncConnectionPool

from workers.common.assemble_requests import STATUS_TTL_SECONDS
from workers.common.blob_lifecycle import send_aged_blob_refresh
from workers.gateway.assemble_types import (
    FileRequest,
    StoredDebugObject,
    StoredFile,
    Target,
    TaskRow,
)

#: Checksums per lookup query.
LOOKUP_BATCH: Final = 10_000
#: A task still `created` this long after its last request was enqueued is enqueued again.
#: The worker moves a task out of `created` as soon as it reads the request, so by then the
#: request was lost (or the worker is that far behind: the duplicate is then skipped).
REQUEUE_CREATED_AFTER_SECONDS: Final = STATUS_TTL_SECONDS

_SCOPE: Final = "organization_id = %s AND kind = %s AND coalesce(project_id, 0) = %s"

_TASKS: Final = (
    "SELECT checksum, id, state, detail, "
    "(state = 'error' AND date_updated < now() - %s * interval '1 second') "
    "OR (state = 'created' AND date_updated < now() - %s * interval '1 second') "
    "FROM assemble_tasks WHERE " + _SCOPE + " AND checksum = ANY(%s)"
)

_FILES: Final = (
    "SELECT f.checksum, f.id, f.name, f.size, f.date_added, f.debug_id, f.cpu_name, "
    "d.id, d.debug_id, d.code_id, d.cpu_name, d.object_name, d.file_format, d.object_kind, "
    "d.features FROM assembled_files f LEFT JOIN LATERAL ("
    "SELECT * FROM debug_files WHERE assembled_file_id = f.id ORDER BY id LIMIT 1"
    ") d ON true "
    "WHERE f.organization_id = %s AND f.kind = %s AND coalesce(f.project_id, 0) = %s "
    "AND f.checksum = ANY(%s)"
)

_OWNED_SIZES: Final = (
    "SELECT b.checksum, b.size FROM blobs b JOIN blob_owners o ON o.blob_id = b.id "
    "WHERE o.organization_id = %s AND b.checksum = ANY(%s)"
)

# A file asked for again after its `error` was forgotten (upstream forgets a status after
# 10 minutes), or still `created` long after it was enqueued, is taken back by the request
# whose conditional UPDATE resets the row and bumps `date_updated` (the others, waiting on its
# lock, find the row recent and take nothing); concurrent requests for a new file race on the
# unique index, and one of them inserts.
_CLAIM: Final = (
    "WITH inserted AS ("
    "INSERT INTO assemble_tasks (organization_id, project_id, kind, checksum, name, chunks, "
    "debug_id, projects, release, dist, state) "
    "VALUES (%(organization_id)s, %(project_id)s, %(kind)s, %(checksum)s, %(name)s, %(chunks)s, "
    "%(debug_id)s, %(projects)s, %(release)s, %(dist)s, 'created') "
    "ON CONFLICT DO NOTHING RETURNING id"
    "), retried AS ("
    "UPDATE assemble_tasks SET state = 'created', detail = NULL, name = %(name)s, "
    "chunks = %(chunks)s, debug_id = %(debug_id)s, projects = %(projects)s, "
    "release = %(release)s, dist = %(dist)s, date_updated = now() "
    "WHERE NOT EXISTS (SELECT 1 FROM inserted) AND organization_id = %(organization_id)s "
    "AND kind = %(kind)s AND coalesce(project_id, 0) = coalesce(%(project_id)s, 0) "
    "AND checksum = %(checksum)s AND ("
    "(state = 'error' AND date_updated < now() - %(retry_after)s * interval '1 second') "
    "OR (state = 'created' AND date_updated < now() - %(requeue_after)s * interval '1 second')"
    ") RETURNING id"
    ") SELECT id FROM inserted UNION ALL SELECT id FROM retried"
)


def _batches(items: Sequence[str], size: int = LOOKUP_BATCH) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _scope(target: Target) -> tuple[int, str, int]:
    return target.organization_id, target.kind, target.project_id or 0


class PostgresAssembleStore:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        retry_errors_after_seconds: int = STATUS_TTL_SECONDS,
        requeue_created_after_seconds: int = REQUEUE_CREATED_AFTER_SECONDS,
    ) -> None:
        self.__pool = pool
        self.__retry_after = retry_errors_after_seconds
        self.__requeue_after = requeue_created_after_seconds

    async def tasks(self, target: Target, checksums: Sequence[str]) -> dict[str, TaskRow]:
        ages = (self.__retry_after, self.__requeue_after)
        rows = await self.__select(_TASKS, (*ages, *_scope(target)), checksums)
        return {
            str(row[0]).strip(): TaskRow(int(row[1]), row[2], row[3], bool(row[4])) for row in rows
        }

    async def files(self, target: Target, checksums: Sequence[str]) -> dict[str, StoredFile]:
        rows = await self.__select(_FILES, _scope(target), checksums)
        return {str(row[0]).strip(): _stored_file(row) for row in rows}

    async def owned_sizes(self, organization_id: int, checksums: Sequence[str]) -> dict[str, int]:
        """The size of each blob of `checksums` the organization owns, keyed by the very
        strings of `checksums` (a request's checksums are not copied).

        The client will not upload the chunks it is told are present, so, as upstream's
        `find_missing_chunks`, those 12 h old get a fresh timestamp first: the sweep's
        retention then runs from now. The refresh and the lookup share one round trip."""
        ours = {checksum: checksum for checksum in checksums}
        rows: list[tuple[Any, ...]] = []
        async with self.__pool.connection() as connection, connection.pipeline():
            lookups = []
            for batch in _batches(checksums):
                await send_aged_blob_refresh(connection, organization_id, batch)
                lookups.append(
                    await connection.execute(_OWNED_SIZES, (organization_id, list(batch)))
                )
            for cursor in lookups:
                rows.extend(await cursor.fetchall())
        return {ours[str(checksum).strip()]: int(size) for checksum, size in rows}

    async def __select(
        self, query: LiteralString, scope: tuple[Any, ...], checksums: Sequence[str]
    ) -> list[tuple[Any, ...]]:
        found: list[tuple[Any, ...]] = []
        async with self.__pool.connection() as connection:
            for batch in _batches(checksums):
                cursor = await connection.execute(query, (*scope, list(batch)))
                found.extend(await cursor.fetchall())
        return found

    async def claim(self, target: Target, requests: Sequence[FileRequest]) -> dict[str, int]:
        """The task id of each file of `requests` whose `created` row this call inserted, or
        took back from a forgotten `error` or a lost `created`; files missing from the
        answer belong to another request (or were not retryable)."""
        if not requests:
            return {}
        params = [
            {
                "organization_id": target.organization_id,
                "project_id": target.project_id,
                "kind": target.kind,
                "checksum": request.checksum,
                "name": request.name,
                "chunks": list(request.chunks),
                "debug_id": request.debug_id,
                "projects": list(target.projects),
                "release": target.release,
                "dist": target.dist,
                "retry_after": self.__retry_after,
                "requeue_after": self.__requeue_after,
            }
            for request in requests
        ]
        claimed: dict[str, int] = {}
        async with self.__pool.connection() as connection:
            cursor = connection.cursor()
            await cursor.executemany(_CLAIM, params, returning=True)
            for request in requests:
                row = await cursor.fetchone()
                if row is not None:
                    claimed[request.checksum] = int(row[0])
                if not cursor.nextset():
                    break
        return claimed

    async def release(self, task_ids: Sequence[int]) -> None:
        """Delete the `created` rows of files whose requests Kafka did not take, so that the
        client's retry enqueues them again."""
        if not task_ids:
            return
        async with self.__pool.connection() as connection:
            await connection.execute(
                "DELETE FROM assemble_tasks WHERE id = ANY(%s) AND state = 'created'",
                (list(task_ids),),
            )


def _stored_file(row: Sequence[Any]) -> StoredFile:
    debug_object = (
        None
        if row[7] is None
        else StoredDebugObject(
            id=int(row[7]),
            debug_id=str(row[8]),
            code_id=row[9],
            cpu_name=str(row[10]),
            object_name=str(row[11]),
            file_format=str(row[12]),
            object_kind=str(row[13]),
            features=tuple(row[14]),
        )
    )
    return StoredFile(
        id=int(row[1]),
        name=str(row[2]),
        checksum=str(row[0]).strip(),
        size=int(row[3]),
        date_added=row[4],
        debug_id=row[5],
        cpu_name=row[6],
        debug_object=debug_object,
    )

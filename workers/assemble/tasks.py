"""The durable state of each assemble (`assemble_tasks`, docs/assemble.md, States): claiming a
task for a run, and what a request for a finished one finds.

A task is claimed with one conditional `UPDATE`: only a task still `created` or `assembling`
moves to `assembling` (its `attempts` counting this start), so a request for a finished task
never starts work again, and a task left `assembling` by a worker that died is simply
claimed again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg_pool import ConnectionPool

from workers.common.assemble_requests import AssembleKind, AssembleRequest, AssembleState

_COLUMNS: Final = (
    "id, organization_id, project_id, kind, checksum, name, chunks, debug_id, projects, "
    "release, dist, attempts"
)


@dataclass(frozen=True)
class AssembleTask:
    """A claimed task: everything the request asked for, and this start's number."""

    id: int
    organization_id: int
    project_id: int | None
    kind: AssembleKind
    checksum: str
    name: str
    chunks: tuple[str, ...]
    debug_id: str | None
    projects: tuple[str, ...]
    release: str | None
    dist: str | None
    attempts: int


@dataclass(frozen=True)
class FinishedTask:
    """A task already `ok` or `error`: nothing left to do but report it."""

    id: int
    organization_id: int
    project_id: int | None
    kind: AssembleKind
    checksum: str
    state: AssembleState
    detail: str | None


class TaskStore:
    """Claims tasks (`assemble_tasks` in PostgreSQL)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.__pool = pool

    def claim(self, request: AssembleRequest) -> AssembleTask | FinishedTask | None:
        """The task moved to `assembling`; the finished task; None when there is no such task
        (no row with that id, organization and checksum)."""
        with self.__pool.connection() as connection:
            row = connection.execute(
                "UPDATE assemble_tasks SET state = 'assembling', attempts = attempts + 1, "
                "detail = NULL, date_updated = now() "
                "WHERE id = %s AND organization_id = %s AND checksum = %s "
                f"AND state IN ('created', 'assembling') RETURNING {_COLUMNS}",
                (request.task_id, request.organization_id, request.checksum),
            ).fetchone()
            if row is not None:
                return _task(row)
            return _finished(connection, request)


def _finished(connection: psycopg.Connection, request: AssembleRequest) -> FinishedTask | None:
    row = connection.execute(
        "SELECT id, organization_id, project_id, kind, checksum, state, detail "
        "FROM assemble_tasks WHERE id = %s AND organization_id = %s AND checksum = %s",
        (request.task_id, request.organization_id, request.checksum),
    ).fetchone()
    if row is None:
        return None
    return FinishedTask(
        id=int(row[0]),
        organization_id=int(row[1]),
        project_id=row[2],
        kind=row[3],
        checksum=str(row[4]).strip(),
        state=row[5],
        detail=row[6],
    )


def _task(row: tuple[Any, ...]) -> AssembleTask:
    return AssembleTask(
        id=int(row[0]),
        organization_id=int(row[1]),
        project_id=row[2],
        kind=row[3],
        checksum=str(row[4]).strip(),
        name=str(row[5]),
        chunks=tuple(str(chunk).strip() for chunk in row[6]),
        debug_id=row[7],
        projects=tuple(row[8]),
        release=row[9],
        dist=row[10],
        attempts=int(row[11]),
    )

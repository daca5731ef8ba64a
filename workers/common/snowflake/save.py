"""Saving a row under a fresh snowflake id, retried on an id collision
(docs/reference.md, Snowflake ids).

A Sentry-layout id can repeat (a counter expired early, clocks disagree), so the database's
primary key is the real guard: `save_with_snowflake_retry` runs the insert in a savepoint
with a fresh id, and only a unique violation *of the table's primary key* is retried, up to
5 attempts; any other unique violation (a slug, a checksum) is re-raised at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import tuple_row

from workers.common.snowflake.errors import MaxSnowflakeRetryError

logger = logging.getLogger(__name__)

MAX_SNOWFLAKE_ATTEMPTS: Final = 5
MAX_RETRY_MESSAGE: Final = "Max allowed ID retry reached. Please try again in a second"

_IS_PRIMARY_KEY = (
    "SELECT EXISTS (SELECT 1 FROM pg_constraint c "
    "JOIN pg_class t ON t.oid = c.conrelid "
    "JOIN pg_namespace n ON n.oid = t.relnamespace "
    "WHERE c.contype = 'p' AND c.conname = %s AND t.relname = %s AND n.nspname = %s)"
)


def save_with_snowflake_retry(
    connection: psycopg.Connection[Any],
    insert: Callable[[int], object],
    generate: Callable[[], int],
    *,
    id_constraint: str | None = None,
    max_attempts: int = MAX_SNOWFLAKE_ATTEMPTS,
) -> int:
    """Call `insert(new_id)` in a savepoint until it succeeds; return the id it used.

    `insert` executes its statement(s) on `connection`. A `UniqueViolation` is retried with a
    fresh id from `generate` only when it violates the id's constraint: `id_constraint` when
    given, else the primary key of the violated table (looked up in the catalog, only after a
    violation). After `max_attempts` collisions: `MaxSnowflakeRetryError` (the message of
    docs/reference.md, Snowflake ids).
    Errors of `generate` (e.g. `NoAvailableId`) propagate unchanged.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    last_collision: pg_errors.UniqueViolation | None = None
    for attempt in range(1, max_attempts + 1):
        new_id = generate()
        try:
            with connection.transaction():
                insert(new_id)
        except pg_errors.UniqueViolation as error:
            if not _violates_id_constraint(connection, error, id_constraint):
                raise
            last_collision = error
            logger.warning(
                "snowflake id collided on save; retrying with a fresh id",
                extra={
                    "snowflake_id": new_id,
                    "attempt": attempt,
                    "max_attempts": max_attempts,
                    "constraint": error.diag.constraint_name,
                },
            )
            continue
        return new_id
    raise MaxSnowflakeRetryError(MAX_RETRY_MESSAGE) from last_collision


def _violates_id_constraint(
    connection: psycopg.Connection[Any],
    error: pg_errors.UniqueViolation,
    id_constraint: str | None,
) -> bool:
    constraint = error.diag.constraint_name
    if constraint is None:
        return False
    if id_constraint is not None:
        return constraint == id_constraint
    table, schema = error.diag.table_name, error.diag.schema_name
    if table is None or schema is None:
        return False
    # Its own transaction or savepoint: leaves the connection's state as it was.
    with connection.transaction(), connection.cursor(row_factory=tuple_row) as cursor:
        row = cursor.execute(_IS_PRIMARY_KEY, (constraint, table, schema)).fetchone()
    return bool(row is not None and row[0])

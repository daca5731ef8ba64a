"""The life of a blob (docs/blob-lifecycle.md): assembling a file refreshes its chunks'
timestamps, and so does reporting them present to an assemble request once they are 12 h
old; the sweep deletes blobs that no assembled file references once older than the
retention. A blob an assembled file references is never deleted, whatever its age.

Upstream: `src/sentry/models/files/utils.py` (`get_and_optionally_update_blob` bumps a blob's
timestamp when it is used), `src/sentry/debug_files/upload.py` (`find_missing_chunks` bumps
the blobs it reports present once they are 12 h old) and `src/sentry/runner/commands/cleanup.py`
(`cleanup_unused_files`: FileBlobs older than a day that no File references are deleted).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Final, LiteralString

import psycopg

#: How long a blob may wait for a file to reference it (upstream's cleanup keeps one day).
DEFAULT_RETENTION: Final = timedelta(hours=24)
#: Blob-ingest refreshes a reused blob's timestamp only once it is older than this, and so
#: does the gateway for the chunks it reports present, so a retention this short or shorter
#: could delete a chunk that was just confirmed present.
REUSE_REFRESH_AFTER: Final = timedelta(hours=12)
#: Checksums per UPDATE: bounds the row locks one statement holds.
REFRESH_BATCH: Final = 1000

#: The rule, as a condition on a blob aliased `b`: no assembled file references it and no
#: unfinished assemble task is about to (`assembled_files_chunks` is a GIN index; unfinished
#: tasks are few). The sweep's DELETE repeats it, so a file assembled meanwhile saves its
#: blobs.
NOT_REFERENCED_BY_ANY_FILE: Final[LiteralString] = (
    "NOT EXISTS (SELECT 1 FROM assembled_files f "
    "WHERE f.chunks @> ARRAY[b.checksum]::char(40)[]) "
    "AND NOT EXISTS (SELECT 1 FROM assemble_tasks t "
    "WHERE t.state IN ('created', 'assembling') AND t.chunks @> ARRAY[b.checksum]::char(40)[])"
)


def check_retention(retention: timedelta) -> timedelta:
    """`retention` if the sweep may use it; ValueError saying why not otherwise."""
    if retention <= REUSE_REFRESH_AFTER:
        hours = REUSE_REFRESH_AFTER.total_seconds() / 3600
        raise ValueError(
            f"the retention must be longer than {hours:g}h, after which a reused chunk's "
            "timestamp is refreshed (a shorter one could delete a chunk just confirmed present)"
        )
    return retention


def refresh_blob_timestamps(connection: psycopg.Connection, checksums: Sequence[str]) -> int:
    """Set `timestamp = now()` on the blobs of `checksums`; returns how many rows changed.

    Duplicates count once (a file may repeat a chunk); checksums without a blob are skipped.
    """
    unique = sorted(set(checksums))
    changed = 0
    for start in range(0, len(unique), REFRESH_BATCH):
        cursor = connection.execute(
            "UPDATE blobs SET timestamp = now() WHERE checksum = ANY(%s)",
            (unique[start : start + REFRESH_BATCH],),
        )
        changed += cursor.rowcount
    return changed


# Rows are locked in id order, so that requests refreshing overlapping chunks never deadlock;
# a blob another request refreshed meanwhile is checked again and left alone.
_REFRESH_AGED_OWNED: Final[LiteralString] = (
    "UPDATE blobs SET timestamp = now() WHERE id IN ("
    "SELECT b.id FROM blobs b WHERE b.checksum = ANY(%s) AND b.timestamp < now() - %s "
    "AND EXISTS (SELECT 1 FROM blob_owners o "
    "WHERE o.blob_id = b.id AND o.organization_id = %s) ORDER BY b.id FOR UPDATE)"
)


async def send_aged_blob_refresh(
    connection: psycopg.AsyncConnection[Any],
    organization_id: int,
    checksums: Sequence[str],
    older_than: timedelta = REUSE_REFRESH_AFTER,
) -> None:
    """Send the `UPDATE`s that set `timestamp = now()` on the blobs of `checksums` that
    `organization_id` owns and that are older than `older_than` (upstream's
    `find_missing_chunks`, for the chunks an assemble request is told are present).

    Their results are not read: on a connection in pipeline mode the statements share the
    round trip of the queries sent after them, which see the refreshed rows (send the
    refresh before the lookup, so a blob the sweep deleted meanwhile is not reported).
    """
    for start in range(0, len(checksums), REFRESH_BATCH):
        batch = list(checksums[start : start + REFRESH_BATCH])
        await connection.execute(_REFRESH_AGED_OWNED, (batch, older_than, organization_id))

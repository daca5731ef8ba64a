"""The life of a blob (docs/blob-lifecycle.md): assembling a file refreshes its chunks'
timestamps; the sweep deletes blobs that no assembled file references once older than the
retention. A blob an assembled file references is never deleted, whatever its age.

Upstream: `src/sentry/models/files/utils.py` (`get_and_optionally_update_blob` bumps a blob's
timestamp when it is used) and `src/sentry/runner/commands/cleanup.py`
(`cleanup_unused_files`: FileBlobs older than a day that no File references are deleted).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Final, LiteralString

import psycopg

#: How long a blob may wait for a file to reference it (upstream's cleanup keeps one day).
DEFAULT_RETENTION: Final = timedelta(hours=24)
#: Blob-ingest refreshes a reused blob's timestamp only once it is older than this, so a
#: retention this short or shorter could delete a chunk that was just confirmed present.
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

"""`workers blobs sweep`: what crashes, abandoned uploads and unassembled chunks leave behind
(docs/blob-lifecycle.md).

Three kinds of garbage:
- orphan objects: storage objects that no `blobs` row references (a crash between the
  storage write and the row commit), older than the window (`older_than`, default 24 h).
  The age guard also protects objects of a batch being written right now.
- ownerless blobs: rows without any owner, older than the window.
- unassembled blobs: owned rows older than the retention (default 24 h, upstream's one day)
  that no assembled file and no unfinished assemble task references: chunks uploaded and
  never assembled.
No blob that a file references is deleted, whatever its age. A row is deleted first, with
every condition re-checked in the same statement, then its object. Dry-run by default;
`--apply` deletes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, LiteralString

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from psycopg_pool import ConnectionPool

from workers.common.blob_lifecycle import DEFAULT_RETENTION, NOT_REFERENCED_BY_ANY_FILE
from workers.common.storage import BlobStorage, FilesystemBlobStorage, StoredObject

LOOKUP_BATCH = 1000

_HAS_OWNER: Final = "EXISTS (SELECT 1 FROM blob_owners o WHERE o.blob_id = b.id)"
_FIND_OWNERLESS: Final[LiteralString] = (
    f"SELECT id, path, timestamp FROM blobs b WHERE b.timestamp < %s AND NOT {_HAS_OWNER} "
    f"AND {NOT_REFERENCED_BY_ANY_FILE} ORDER BY id"
)
_DELETE_OWNERLESS: Final[LiteralString] = (
    f"DELETE FROM blobs b WHERE b.id = ANY(%s) AND b.timestamp < %s AND NOT {_HAS_OWNER} "
    f"AND {NOT_REFERENCED_BY_ANY_FILE} RETURNING path"
)
_FIND_UNASSEMBLED: Final[LiteralString] = (
    f"SELECT id, path, timestamp FROM blobs b WHERE b.timestamp < %s AND {_HAS_OWNER} "
    f"AND {NOT_REFERENCED_BY_ANY_FILE} ORDER BY id"
)
_DELETE_UNASSEMBLED: Final[LiteralString] = (
    "DELETE FROM blobs b WHERE b.id = ANY(%s) AND b.timestamp < %s "
    f"AND {NOT_REFERENCED_BY_ANY_FILE} RETURNING path"
)


@dataclass(frozen=True)
class SweptBlob:
    id: int
    path: str
    timestamp: datetime


@dataclass
class SweepReport:
    orphan_objects: list[StoredObject] = field(default_factory=list)
    ownerless_blobs: list[SweptBlob] = field(default_factory=list)
    unassembled_blobs: list[SweptBlob] = field(default_factory=list)
    deleted_objects: int = 0
    deleted_ownerless_blobs: int = 0
    deleted_unassembled_blobs: int = 0


@dataclass(frozen=True)
class SweepCutoffs:
    """Garbage is older than these: `window` for crash leftovers (orphan objects, ownerless
    blobs), `retention` for blobs no file references."""

    window: datetime
    retention: datetime

    @classmethod
    def at(
        cls,
        older_than: timedelta,
        retention: timedelta = DEFAULT_RETENTION,
        now: datetime | None = None,
    ) -> SweepCutoffs:
        moment = now or datetime.now(UTC)
        return cls(window=moment - older_than, retention=moment - retention)


def _batched(items: Iterator[StoredObject], size: int) -> Iterator[list[StoredObject]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


def _unreferenced(pool: ConnectionPool, objects: Sequence[StoredObject]) -> list[StoredObject]:
    with pool.connection() as connection:
        rows = connection.execute(
            "SELECT path FROM blobs WHERE path = ANY(%s)", ([o.path for o in objects],)
        ).fetchall()
    referenced = {row[0] for row in rows}
    return [o for o in objects if o.path not in referenced]


def _find_blobs(pool: ConnectionPool, query: LiteralString, cutoff: datetime) -> list[SweptBlob]:
    with pool.connection() as connection:
        rows = connection.execute(query, (cutoff,)).fetchall()
    return [SweptBlob(blob_id, path, timestamp) for blob_id, path, timestamp in rows]


def find_garbage(
    pool: ConnectionPool,
    storage: BlobStorage,
    older_than: timedelta,
    now: datetime | None = None,
    retention: timedelta = DEFAULT_RETENTION,
) -> SweepReport:
    cutoffs = SweepCutoffs.at(older_than, retention, now)
    report = SweepReport()
    old_objects = (o for o in storage.iter_objects() if o.modified < cutoffs.window)
    for batch in _batched(old_objects, LOOKUP_BATCH):
        report.orphan_objects.extend(_unreferenced(pool, batch))
    report.ownerless_blobs = _find_blobs(pool, _FIND_OWNERLESS, cutoffs.window)
    report.unassembled_blobs = _find_blobs(pool, _FIND_UNASSEMBLED, cutoffs.retention)
    return report


def _delete_blobs(
    pool: ConnectionPool,
    storage: BlobStorage,
    blobs: Sequence[SweptBlob],
    query: LiteralString,
    cutoff: datetime,
) -> int:
    """Rows first (the statement re-checks every condition), then their objects."""
    deleted = 0
    for start in range(0, len(blobs), LOOKUP_BATCH):
        ids = [blob.id for blob in blobs[start : start + LOOKUP_BATCH]]
        with pool.connection() as connection, connection.transaction():
            rows = connection.execute(query, (ids, cutoff)).fetchall()
        paths = [row[0] for row in rows]
        storage.delete_many(paths)
        deleted += len(paths)
    return deleted


def delete_garbage(
    pool: ConnectionPool,
    storage: BlobStorage,
    report: SweepReport,
    older_than: timedelta,
    now: datetime | None = None,
    retention: timedelta = DEFAULT_RETENTION,
) -> SweepReport:
    """Delete what `find_garbage` found, re-checking each condition at deletion time."""
    cutoffs = SweepCutoffs.at(older_than, retention, now)
    report.deleted_ownerless_blobs += _delete_blobs(
        pool, storage, report.ownerless_blobs, _DELETE_OWNERLESS, cutoffs.window
    )
    report.deleted_unassembled_blobs += _delete_blobs(
        pool, storage, report.unassembled_blobs, _DELETE_UNASSEMBLED, cutoffs.retention
    )
    for start in range(0, len(report.orphan_objects), LOOKUP_BATCH):
        still_orphans = _unreferenced(pool, report.orphan_objects[start : start + LOOKUP_BATCH])
        storage.delete_many([o.path for o in still_orphans])
        report.deleted_objects += len(still_orphans)
    if isinstance(storage, FilesystemBlobStorage):
        # Half-written temporary files of a crashed batch are invisible to iter_objects.
        report.deleted_objects += storage.remove_temporary_files(older_than, now)
    return report


def write_sweep_metrics(path: Path, report: SweepReport) -> None:
    """The sweep's figures for node_exporter's textfile collector (a one-shot job has no
    endpoint to scrape); written atomically."""
    registry = CollectorRegistry()
    found = Gauge(
        "workers_blob_sweep_found",
        "Garbage found by the last blob sweep.",
        ("kind",),
        registry=registry,
    )
    deleted = Gauge(
        "workers_blob_sweep_deleted",
        "Garbage deleted by the last blob sweep (0 on a dry run).",
        ("kind",),
        registry=registry,
    )
    found.labels("orphan_object").set(len(report.orphan_objects))
    found.labels("ownerless_blob").set(len(report.ownerless_blobs))
    found.labels("unassembled_blob").set(len(report.unassembled_blobs))
    deleted.labels("orphan_object").set(report.deleted_objects)
    deleted.labels("ownerless_blob").set(report.deleted_ownerless_blobs)
    deleted.labels("unassembled_blob").set(report.deleted_unassembled_blobs)
    Gauge(
        "workers_blob_sweep_last_run_timestamp_seconds",
        "When the last blob sweep finished.",
        registry=registry,
    ).set_to_current_time()
    write_to_textfile(str(path), registry)

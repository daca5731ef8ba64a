"""`workers blobs sweep`: what crashes and abandoned uploads leave behind.

Two kinds of garbage, both only when older than the window (default 24 h, twice the 12 h
after which a reused blob's timestamp is refreshed, so a chunk just confirmed present is safe):
- orphan objects: storage objects that no `blobs` row references (a crash between the
  storage write and the row commit). The age guard also protects objects of a batch being
  written right now, whose rows are not committed yet.
- unreferenced blobs: rows without any owner; the row is deleted first (re-checked in the
  same statement), then its object.
Dry-run by default; `--apply` deletes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from psycopg_pool import ConnectionPool

from workers.common.storage import BlobStorage, FilesystemBlobStorage, StoredObject

LOOKUP_BATCH = 1000


@dataclass
class SweepReport:
    orphan_objects: list[StoredObject] = field(default_factory=list)
    unreferenced_blobs: list[tuple[int, str]] = field(default_factory=list)
    deleted_objects: int = 0
    deleted_blobs: int = 0


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


def find_garbage(
    pool: ConnectionPool, storage: BlobStorage, older_than: timedelta, now: datetime | None = None
) -> SweepReport:
    cutoff = (now or datetime.now(UTC)) - older_than
    report = SweepReport()
    old_objects = (o for o in storage.iter_objects() if o.modified < cutoff)
    for batch in _batched(old_objects, LOOKUP_BATCH):
        report.orphan_objects.extend(_unreferenced(pool, batch))
    with pool.connection() as connection:
        rows = connection.execute(
            "SELECT id, path FROM blobs b WHERE b.timestamp < %s AND NOT EXISTS "
            "(SELECT 1 FROM blob_owners o WHERE o.blob_id = b.id) ORDER BY id",
            (cutoff,),
        ).fetchall()
    report.unreferenced_blobs = [(blob_id, path) for blob_id, path in rows]
    return report


def delete_garbage(
    pool: ConnectionPool,
    storage: BlobStorage,
    report: SweepReport,
    older_than: timedelta,
    now: datetime | None = None,
) -> SweepReport:
    """Delete what `find_garbage` found, re-checking each condition at deletion time."""
    cutoff = (now or datetime.now(UTC)) - older_than
    for start in range(0, len(report.unreferenced_blobs), LOOKUP_BATCH):
        ids = [blob_id for blob_id, _ in report.unreferenced_blobs[start : start + LOOKUP_BATCH]]
        with pool.connection() as connection, connection.transaction():
            deleted = connection.execute(
                "DELETE FROM blobs b WHERE b.id = ANY(%s) AND b.timestamp < %s AND NOT EXISTS "
                "(SELECT 1 FROM blob_owners o WHERE o.blob_id = b.id) RETURNING path",
                (ids, cutoff),
            ).fetchall()
        paths = [row[0] for row in deleted]
        storage.delete_many(paths)
        report.deleted_blobs += len(paths)
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
    found.labels("unreferenced_blob").set(len(report.unreferenced_blobs))
    deleted.labels("orphan_object").set(report.deleted_objects)
    deleted.labels("unreferenced_blob").set(report.deleted_blobs)
    Gauge(
        "workers_blob_sweep_last_run_timestamp_seconds",
        "When the last blob sweep finished.",
        registry=registry,
    ).set_to_current_time()
    write_to_textfile(str(path), registry)

"""`BlobWriter` against the real PostgreSQL when the connection fails: an in-doubt COMMIT
keeps its objects, an outage is ridden out with retries, and past the window the error is
raised with the objects left to the sweep (docs/blob-ingest.md, Faults)."""

from __future__ import annotations

import hashlib
import itertools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from workers.blob_ingest.decode import VerifiedChunk
from workers.blob_ingest.persist import BlobWriter
from workers.common.backoff import Backoff
from workers.common.database import create_pool
from workers.common.database_outage import DatabaseOutage
from workers.common.projects import create_organization
from workers.common.settings import Settings
from workers.common.storage.filesystem import FilesystemBlobStorage

_ids = itertools.count(int(uuid.uuid4().int % 2**40) << 20)


class FailingPool:
    """The real pool, but the connection uses listed in `fail_after` raise a lost connection
    once their block completed (a COMMIT applied, its answer lost), and those in
    `fail_before` raise before doing anything (the server is down)."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.fail_after: set[int] = set()
        self.fail_before = 0
        self.uses = 0

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        self.uses += 1
        use = self.uses
        if self.fail_before:
            self.fail_before -= 1
            raise psycopg.OperationalError("connection refused (the server is restarting)")
        with self.pool.connection() as connection:
            yield connection
        if use in self.fail_after:
            raise psycopg.OperationalError("server closed the connection unexpectedly")


@pytest.fixture
def pool(settings: Settings) -> Iterator[ConnectionPool]:
    pool = create_pool(settings, name="test-blob-writer-faults")
    yield pool
    pool.close()


@pytest.fixture
def organization_id(connection: psycopg.Connection[Any]) -> int:
    return create_organization(connection, f"writer-faults-{uuid.uuid4().hex[:10]}", "t").id


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[FilesystemBlobStorage]:
    with FilesystemBlobStorage(tmp_path / "blobs") as storage:
        yield storage


def chunks(organization_id: int, count: int) -> list[VerifiedChunk]:
    made = []
    for _ in range(count):
        data = os.urandom(4096)
        checksum = hashlib.sha1(data, usedforsecurity=False).hexdigest()
        made.append(VerifiedChunk(organization_id, checksum, data, 0, len(data)))
    return made


def quick_backoff() -> Backoff:
    return Backoff(0.01, 0.05)


@dataclass
class Writing:
    """A writer's world: the real pool behind a `FailingPool`, storage, an organization."""

    failing: FailingPool
    storage: FilesystemBlobStorage
    organization_id: int
    connection: psycopg.Connection[Any]

    def writer(self, outage_seconds: float = 60.0) -> BlobWriter:
        outage = DatabaseOutage(outage_seconds, backoff=quick_backoff)
        return BlobWriter(self.failing, self.storage, lambda: next(_ids), outage)  # type: ignore[arg-type]

    def chunks(self, count: int) -> list[VerifiedChunk]:
        return chunks(self.organization_id, count)

    def rows(self, batch: list[VerifiedChunk]) -> dict[str, str]:
        """checksum → path of the batch's committed blob rows."""
        found = self.connection.execute(
            "SELECT checksum, path FROM blobs WHERE checksum = ANY(%s)",
            ([chunk.checksum for chunk in batch],),
        ).fetchall()
        return {checksum.strip(): path for checksum, path in found}

    def objects(self) -> list[str]:
        return sorted(stored.path for stored in self.storage.iter_objects())


@pytest.fixture
def writing(
    pool: ConnectionPool,
    storage: FilesystemBlobStorage,
    organization_id: int,
    connection: psycopg.Connection[Any],
) -> Writing:
    return Writing(FailingPool(pool), storage, organization_id, connection)


def test_a_commit_whose_answer_was_lost_keeps_its_objects_and_counts_no_race(
    writing: Writing,
) -> None:
    batch = writing.chunks(20)
    # Use 1 is the lookup, use 2 the transaction: it commits, then the connection "drops".
    writing.failing.fail_after = {2}
    result = writing.writer().persist(batch)
    assert writing.failing.uses == 3
    assert (result.new_blobs, result.races, result.owners_added) == (20, 0, 0)
    committed = writing.rows(batch)
    assert len(committed) == 20
    for chunk in batch:
        assert writing.storage.get(committed[chunk.checksum]) == chunk.data
    assert writing.objects() == sorted(committed.values())


def test_an_outage_during_lookup_and_commit_is_ridden_out(writing: Writing) -> None:
    batch = writing.chunks(5)
    writer = writing.writer()
    writing.failing.fail_before = 3
    stored = writer.store(batch)
    assert writing.failing.uses == 4
    writing.failing.fail_before = 2
    result = writer.commit(stored)
    assert (result.new_blobs, result.owners_added) == (5, 5)
    committed = writing.rows(batch)
    for chunk in batch:
        assert writing.storage.get(committed[chunk.checksum]) == chunk.data


def test_past_the_outage_window_the_error_is_raised_and_the_objects_stay(
    writing: Writing,
) -> None:
    batch = writing.chunks(5)
    writer = writing.writer(outage_seconds=0.2)
    stored = writer.store(batch)
    writing.failing.fail_before = 10_000
    with pytest.raises(psycopg.OperationalError):
        writer.commit(stored)
    assert writing.rows(batch) == {}
    # In doubt, so kept: the sweep deletes them once they are old enough.
    assert writing.objects() == sorted(blob.path for blob in stored.new_blobs)

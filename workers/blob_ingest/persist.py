"""Persisting a batch of verified chunks as blobs, set-based, in two stages that the chain
overlaps from one batch to the next (docs/reference.md, Blob store; docs/blob-ingest.md, Chain).

`store(chunks)`, stage one:
1. de-duplicate by checksum within the batch (keeping every (checksum, organization) pair);
2. one `SELECT ... WHERE checksum = ANY(...)` finds blobs that already exist;
3. new chunks are written to storage under fresh random paths (`put_new_many`: durable on
   return).
`commit(stored)`, stage two:
4. one transaction: `INSERT ... ON CONFLICT (checksum) DO NOTHING RETURNING` for the new
   blobs; the checksums not returned lost a race to another writer (or to the previous batch,
   whose transaction may still have been running during this batch's lookup), whose rows are
   adopted; reused blobs older than 12 h get a fresh `timestamp` (the sweep deletes
   unreferenced blobs after 24 h, so a chunk just confirmed present cannot vanish); owners are
   inserted with `ON CONFLICT DO NOTHING`;
5. after the commit, objects written for lost races are deleted. If the transaction fails
   with an error from the server (the transaction was rolled back) the objects just written
   are deleted too (best effort; what a crash leaves behind is found by `workers blobs sweep`).

A lost connection (`psycopg.OperationalError`: PostgreSQL restarting, a failover, a network
cut) leaves the outcome of the transaction in doubt: the COMMIT may have been applied with
its answer lost. The objects are then kept, and the batch's transaction is tried again with
exponential backoff for up to the outage window (`DatabaseOutage`; the lookup of stage one
too). A retry whose INSERT finds a row with its own object's path recognises its earlier,
committed attempt and keeps that object. Past the window the error ends the worker, and its
objects are left to the sweep (docs/blob-ingest.md, Faults).
`discard(stored)` deletes the objects of a stored batch that will not be committed.
`persist(chunks)` is both stages in a row. About five round trips per batch, whatever its size.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import psycopg
from psycopg_pool import ConnectionPool

from workers.blob_ingest.decode import VerifiedChunk
from workers.common.blob_lifecycle import REUSE_REFRESH_AFTER
from workers.common.database_outage import DatabaseOutage
from workers.common.storage import BlobStorage, random_blob_paths

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


def joined(values: Iterable[str | int]) -> str:
    """Values as one text parameter for `string_to_array(%s, ',')::type[]`: psycopg dumps a
    list element by element in Python (a few µs each, six lists of a thousand per batch),
    one string costs nothing. Only for values that never hold a comma: ids, sizes, hex
    checksums and blob paths (`ab/cdef/<hex>`)."""
    return ",".join(map(str, values))


@dataclass(frozen=True)
class PersistResult:
    chunks: int
    duplicates_in_batch: int
    already_stored: int
    new_blobs: int
    races: int
    bytes_stored: int
    owners_added: int


@dataclass(frozen=True)
class NewBlob:
    id: int
    path: str
    size: int
    checksum: str


@dataclass(frozen=True)
class StoredBatch:
    """A batch after stage one: its objects are durable, its rows not written yet."""

    chunks: Sequence[VerifiedChunk]
    unique: Mapping[str, VerifiedChunk]
    owners: frozenset[tuple[str, int]]
    #: Blobs found by the lookup, checksum → id.
    existing: Mapping[str, int]
    new_blobs: Sequence[NewBlob]

    @classmethod
    def unstored(cls, chunks: Sequence[VerifiedChunk]) -> StoredBatch:
        """The chunks with nothing looked up or written (for writers that do all in `commit`)."""
        return cls(chunks, {}, frozenset(), {}, [])


class ChunkWriter(Protocol):
    """What `BatchPersister` drives: `BlobWriter`, or the bench's per-chunk reference."""

    def store(self, chunks: Sequence[VerifiedChunk]) -> StoredBatch: ...

    def commit(self, stored: StoredBatch) -> PersistResult: ...

    def discard(self, stored: StoredBatch) -> None: ...


class BlobWriter:
    def __init__(
        self,
        pool: ConnectionPool,
        storage: BlobStorage,
        generate_id: Callable[[], int],
        outage: DatabaseOutage | None = None,
    ) -> None:
        self.__pool = pool
        self.__storage = storage
        self.__generate_id = generate_id
        self.__outage = outage if outage is not None else DatabaseOutage()

    def persist(self, chunks: Sequence[VerifiedChunk]) -> PersistResult:
        return self.commit(self.store(chunks))

    def store(self, chunks: Sequence[VerifiedChunk]) -> StoredBatch:
        unique: dict[str, VerifiedChunk] = {}
        owners: set[tuple[str, int]] = set()
        for chunk in chunks:
            unique.setdefault(chunk.checksum, chunk)
            owners.add((chunk.checksum, chunk.organization_id))
        existing = self.__outage.run("lookup", lambda: self.__lookup(unique))
        # Sorted by checksum: concurrent writers then take unique-index entries in one order
        # and cannot deadlock on each other.
        missing = [checksum for checksum in sorted(unique) if checksum not in existing]
        new_blobs = [
            NewBlob(self.__generate_id(), path, len(unique[checksum].data), checksum)
            for checksum, path in zip(missing, random_blob_paths(len(missing)), strict=True)
        ]
        if new_blobs:
            self.__storage.put_new_many(
                [(blob.path, unique[blob.checksum].data) for blob in new_blobs]
            )
        return StoredBatch(chunks, unique, frozenset(owners), existing, new_blobs)

    def commit(self, stored: StoredBatch) -> PersistResult:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return self.__outage.run("commit", functools.partial(self.__commit_once, stored))
            except psycopg.errors.ForeignKeyViolation:
                # The sweep deleted an unreferenced blob between our lookup and our owner
                # insert; the next attempt no longer finds it and stores the chunk anew.
                if attempt == MAX_ATTEMPTS:
                    raise
                logger.info("blob swept while being reused; retrying the batch")
                stored = self.store(stored.chunks)
        raise AssertionError("unreachable")

    def discard(self, stored: StoredBatch) -> None:
        if stored.new_blobs:
            self.__delete_quietly([blob.path for blob in stored.new_blobs])

    def __lookup(self, checksums: Iterable[str]) -> dict[str, int]:
        """checksum → id of the blobs that exist."""
        with self.__pool.connection() as connection:
            rows = connection.execute(
                "SELECT checksum, id FROM blobs "
                "WHERE checksum = ANY(string_to_array(%s, ',')::char(40)[])",
                (joined(checksums),),
            ).fetchall()
        return {checksum.strip(): blob_id for checksum, blob_id in rows}

    def __commit_once(self, stored: StoredBatch) -> PersistResult:
        new_blobs = stored.new_blobs
        blob_ids = dict(stored.existing)
        reused_ids = list(blob_ids.values())
        try:
            lost, owners_added = self.__write_rows(new_blobs, reused_ids, blob_ids, stored.owners)
        except psycopg.OperationalError:
            # In doubt: the rows may be committed, so their objects stay.
            raise
        except BaseException:
            self.discard(stored)
            raise
        if lost:
            self.__delete_quietly([blob.path for blob in lost])
        return PersistResult(
            chunks=len(stored.chunks),
            duplicates_in_batch=len(stored.chunks) - len(stored.unique),
            already_stored=len(reused_ids),
            new_blobs=len(new_blobs) - len(lost),
            races=len(lost),
            bytes_stored=sum(blob.size for blob in new_blobs) - sum(blob.size for blob in lost),
            owners_added=owners_added,
        )

    def __write_rows(
        self,
        new_blobs: Sequence[NewBlob],
        reused_ids: Sequence[int],
        blob_ids: dict[str, int],
        owners: frozenset[tuple[str, int]],
    ) -> tuple[list[NewBlob], int]:
        """Rows for one batch in one transaction; returns the blobs that lost a race and the
        number of owner rows added."""
        lost: list[NewBlob] = []
        with self.__pool.connection() as connection, connection.transaction():
            if new_blobs:
                inserted = connection.execute(
                    "INSERT INTO blobs (id, path, size, checksum) "
                    "SELECT * FROM unnest(string_to_array(%s, ',')::bigint[], "
                    "string_to_array(%s, ','), string_to_array(%s, ',')::integer[], "
                    "string_to_array(%s, ',')::char(40)[]) "
                    "ON CONFLICT (checksum) DO NOTHING RETURNING checksum, id",
                    (
                        joined(blob.id for blob in new_blobs),
                        joined(blob.path for blob in new_blobs),
                        joined(blob.size for blob in new_blobs),
                        joined(blob.checksum for blob in new_blobs),
                    ),
                ).fetchall()
                won = {checksum.strip(): blob_id for checksum, blob_id in inserted}
                blob_ids.update(won)
                conflicting = [blob for blob in new_blobs if blob.checksum not in won]
                if conflicting:
                    rows = connection.execute(
                        "SELECT checksum, id, path FROM blobs WHERE checksum = ANY(%s)",
                        ([blob.checksum for blob in conflicting],),
                    ).fetchall()
                    winners = {
                        checksum.strip(): (blob_id, path) for checksum, blob_id, path in rows
                    }
                    blob_ids.update(
                        {checksum: blob_id for checksum, (blob_id, _) in winners.items()}
                    )
                    # A row with our own path is this batch's earlier attempt, committed with
                    # its answer lost: not a race, and its object must stay.
                    lost = [blob for blob in conflicting if winners[blob.checksum][1] != blob.path]
                    # Adopted rows are reused blobs: they get the 12 h touch as well.
                    reused_ids = [*reused_ids, *(winners[blob.checksum][0] for blob in lost)]
            if reused_ids:
                connection.execute(
                    "UPDATE blobs SET timestamp = now() WHERE id = ANY(%s) "
                    "AND timestamp < now() - %s",
                    (sorted(reused_ids), REUSE_REFRESH_AFTER),
                )
            owner_rows = sorted((blob_ids[checksum], org) for checksum, org in owners)
            added = connection.execute(
                "INSERT INTO blob_owners (blob_id, organization_id) "
                "SELECT * FROM unnest(string_to_array(%s, ',')::bigint[], "
                "string_to_array(%s, ',')::bigint[]) "
                "ON CONFLICT (blob_id, organization_id) DO NOTHING",
                (
                    joined(blob_id for blob_id, _ in owner_rows),
                    joined(org for _, org in owner_rows),
                ),
            )
            return lost, added.rowcount

    def __delete_quietly(self, paths: Sequence[str]) -> None:
        try:
            self.__storage.delete_many(paths)
        except Exception:
            logger.exception(
                "could not delete objects left by a failed or lost write; the sweep will",
                extra={"objects": len(paths)},
            )

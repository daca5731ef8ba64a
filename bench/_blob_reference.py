"""A per-chunk blob writer that behaves like Sentry's, for `bench.blob_ingest`.

Sentry's way and the fleet's are compared in docs/reference.md, Blob store.

For every chunk, in its own transaction on a connection from the pool:

    BEGIN; SELECT id FROM blobs WHERE checksum = %s;      -- one lookup by checksum
    storage.put_new_many([(path, data)])                  -- one storage write (fsync'd)
    INSERT INTO blobs ... ON CONFLICT (checksum) DO NOTHING RETURNING id;
    INSERT INTO blob_owners ... ON CONFLICT DO NOTHING;   -- one owner INSERT
    COMMIT;

That is the reference's weakness, one round trip per chunk per step, kept on purpose; the
rest is no weaker than the batched writer: the object is written with the same primitive
(`put_new_many`, in place, no rename), and the chain around it is the worker's (decoding in
the pool, pipelined stages). All of it happens in the pipeline's second stage (`commit`;
`store` does nothing), since each chunk's write belongs to its own transaction. The
results are the same as `BlobWriter`'s (races adopt the winner's row and delete the object just
written, a reused blob gets the 12 h touch), so both writers can run through the same chain.
It lives in the bench, not in `workers/`: it exists only to be compared against.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from psycopg_pool import ConnectionPool

from workers.blob_ingest.decode import VerifiedChunk
from workers.blob_ingest.persist import PersistResult, StoredBatch
from workers.common.blob_lifecycle import REUSE_REFRESH_AFTER
from workers.common.storage import BlobStorage, random_blob_path

logger = logging.getLogger(__name__)


class PerChunkBlobWriter:
    """A `ChunkWriter` (`store`, `commit`, `discard`) like `BlobWriter`, one chunk at a time."""

    def __init__(
        self, pool: ConnectionPool, storage: BlobStorage, generate_id: Callable[[], int]
    ) -> None:
        self._pool = pool
        self._storage = storage
        self._generate_id = generate_id

    def store(self, chunks: Sequence[VerifiedChunk]) -> StoredBatch:
        return StoredBatch.unstored(chunks)

    def commit(self, stored: StoredBatch) -> PersistResult:
        chunks = stored.chunks
        already_stored = new_blobs = races = bytes_stored = owners_added = 0
        for chunk in chunks:
            outcome, owner_added = self._persist_chunk(chunk)
            already_stored += outcome == "reused"
            new_blobs += outcome == "new"
            races += outcome == "race"
            bytes_stored += len(chunk.data) if outcome == "new" else 0
            owners_added += owner_added
        return PersistResult(
            chunks=len(chunks),
            duplicates_in_batch=0,  # each chunk is looked up again; a repeat counts as reused
            already_stored=already_stored,
            new_blobs=new_blobs,
            races=races,
            bytes_stored=bytes_stored,
            owners_added=owners_added,
        )

    def discard(self, stored: StoredBatch) -> None:
        return None  # `store` wrote nothing

    def _persist_chunk(self, chunk: VerifiedChunk) -> tuple[str, int]:
        """`("new" | "reused" | "race", owner rows added)` for one chunk, committed."""
        written: str | None = None
        lost: str | None = None
        try:
            with self._pool.connection() as connection, connection.transaction():
                row = connection.execute(
                    "SELECT id FROM blobs WHERE checksum = %s", (chunk.checksum,)
                ).fetchone()
                if row is not None:
                    outcome = "reused"
                    blob_id: int = row[0]
                    connection.execute(
                        "UPDATE blobs SET timestamp = now() WHERE id = %s "
                        "AND timestamp < now() - %s",
                        (blob_id, REUSE_REFRESH_AFTER),
                    )
                else:
                    written = random_blob_path()
                    self._storage.put_new_many([(written, chunk.data)])
                    inserted = connection.execute(
                        "INSERT INTO blobs (id, path, size, checksum) VALUES (%s, %s, %s, %s) "
                        "ON CONFLICT (checksum) DO NOTHING RETURNING id",
                        (self._generate_id(), written, len(chunk.data), chunk.checksum),
                    ).fetchone()
                    if inserted is not None:
                        outcome = "new"
                        blob_id = inserted[0]
                    else:
                        outcome = "race"
                        lost = written
                        winner = connection.execute(
                            "SELECT id FROM blobs WHERE checksum = %s", (chunk.checksum,)
                        ).fetchone()
                        assert winner is not None
                        blob_id = winner[0]
                added = connection.execute(
                    "INSERT INTO blob_owners (blob_id, organization_id) VALUES (%s, %s) "
                    "ON CONFLICT (blob_id, organization_id) DO NOTHING",
                    (blob_id, chunk.organization_id),
                )
                owner_added = added.rowcount
        except BaseException:
            if written is not None:
                self._delete_quietly(written)
            raise
        if lost is not None:
            self._delete_quietly(lost)
        return outcome, owner_added

    def _delete_quietly(self, path: str) -> None:
        try:
            self._storage.delete_many([path])
        except Exception:
            logger.exception("could not delete an object left by a failed or lost write")

"""Assembling files from chunks: what sentry-cli's assemble calls get answered
(docs/reference.md, Assemble; the bounds in docs/gateway.md, Bounded assemble).

The files of one request are answered together. For each file (sha1 of the whole file +
the ordered sha1s of its chunks), in this order:
1. already assembled (a row in `assembled_files` for the organization, kind, project and
   checksum) → `ok`;
2. chunks whose blob the organization owns (`blob_owners` join `blobs` by checksum) are
   present; chunks accepted by the gateway but not yet persisted by blob-ingest (`pending`)
   are on their way; anything else is missing → `not_found` with `missingChunks`;
3. some chunks still on their way → `created` (sentry-cli `--wait` polls again);
4. every chunk is a blob → the file is verified: its chunks are read back from storage in
   order and hashed (workers/gateway/verify.py: each distinct chunk list once, each chunk
   read once when it can be, all within the request's budget). A file that does not fit the
   budget → `error` with a detail, unread; a whole-file sha1 that differs from the claimed
   one → `error` with a detail; otherwise the file is recorded (name, checksum, ordered
   chunks, size, organization, project) → `ok`.

Lookups are made for the request's distinct checksums at once, in batches
(`LOOKUP_BATCH`, `PENDING_BATCH`): a handful of round trips, however many files list the
same chunks. Blob sizes are looked up for every chunk (the budget needs them), storage
paths only for the chunks to read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, LiteralString, Protocol

from psycopg_pool import AsyncConnectionPool

from workers.common.storage import BlobStorage, StorageError
from workers.gateway.verify import (
    DEFAULT_CACHE_BYTES,
    DEFAULT_MAX_VERIFY_BYTES,
    Verification,
    Verified,
    VerifyPlan,
    chunk_list_cost,
    cpu_name,
    verify_chunk_lists,
)

__all__ = [
    "AssembleLimits",
    "AssembleResult",
    "AssembledFile",
    "Assembler",
    "FileRequest",
    "PostgresAssembleStore",
    "Target",
    "cpu_name",
    "dif_object",
]

State = Literal["not_found", "created", "assembling", "ok", "error"]
Kind = Literal["dif", "artifact_bundle"]

logger = logging.getLogger(__name__)

#: Checksums per lookup query.
LOOKUP_BATCH: Final = 10_000
#: Checksums per Redis MGET: redis-py packs and parses in Python, on the event loop, so a
#: batch stays short (about 20 ms) and other requests are served in between.
PENDING_BATCH: Final = 2_000


@dataclass(frozen=True)
class FileRequest:
    checksum: str
    name: str
    chunks: tuple[str, ...]
    debug_id: str | None = None


@dataclass(frozen=True)
class Target:
    """Where a file belongs: a project's debug files, or the organization's bundles."""

    organization_id: int
    kind: Kind
    project_id: int | None = None
    projects: tuple[str, ...] = ()
    release: str | None = None
    dist: str | None = None


@dataclass(frozen=True)
class AssembledFile:
    id: int
    name: str
    checksum: str
    size: int
    debug_id: str | None
    cpu_name: str | None


@dataclass(frozen=True)
class AssembleResult:
    state: State
    missing_chunks: tuple[str, ...] = ()
    detail: str | None = None
    file: AssembledFile | None = None


@dataclass(frozen=True)
class AssembleLimits:
    """What one assemble request may cost (docs/gateway.md, Bounded assemble)."""

    #: Bytes of chunks hashed for one request (each chunk counts at least 1 MiB).
    max_verify_bytes: int = DEFAULT_MAX_VERIFY_BYTES
    #: Chunk bytes kept between two uses of a chunk within one request.
    cache_bytes: int = DEFAULT_CACHE_BYTES


class AssembleStore(Protocol):
    """The rows assemble reads and writes (PostgreSQL in production)."""

    async def assembled(
        self, target: Target, checksums: Sequence[str]
    ) -> dict[str, AssembledFile]: ...

    async def owned_sizes(self, organization_id: int, checksums: Sequence[str]) -> dict[str, int]:
        """The size of each blob of `checksums` the organization owns, keyed by the very
        strings of `checksums` (a request's checksums are not copied)."""
        ...

    async def paths(self, organization_id: int, checksums: Sequence[str]) -> dict[str, str]:
        """Where the owned blobs of `checksums` are stored (only for the chunks to read)."""
        ...

    async def record(
        self, target: Target, request: FileRequest, verified: Verified
    ) -> AssembledFile: ...


class PendingLookup(Protocol):
    async def which(self, organization_id: int, checksums: Sequence[str]) -> set[str]: ...


def _batches(items: Sequence[str], size: int = LOOKUP_BATCH) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _too_large(limit: int) -> str:
    return (
        f"file too large to verify: its chunks add up to more than the {limit} bytes "
        "the gateway verifies per assemble request"
    )


def _over_budget(limit: int) -> str:
    return (
        f"not verified: the files of this request need more than the {limit} bytes of chunks "
        "the gateway verifies per assemble request; send it again for the files left "
        "(assembled files are not verified again)"
    )


def _mismatch(made: str, claimed: str) -> str:
    return f"checksum mismatch: the chunks make a file with sha1 {made}, not {claimed}"


class Assembler:
    def __init__(
        self,
        store: AssembleStore,
        pending: PendingLookup,
        storage: BlobStorage,
        limits: AssembleLimits | None = None,
    ) -> None:
        self.__store = store
        self.__pending = pending
        self.__storage = storage
        self.limits = limits or AssembleLimits()

    async def assemble(self, target: Target, request: FileRequest) -> AssembleResult:
        (result,) = await self.assemble_many(target, [request])
        return result

    async def assemble_many(
        self, target: Target, requests: Sequence[FileRequest]
    ) -> list[AssembleResult]:
        """The answer for each file of one request, in the request's order."""
        results: list[AssembleResult | None] = [None] * len(requests)
        existing = await self.__store.assembled(
            target, list(dict.fromkeys(request.checksum for request in requests))
        )
        waiting: list[int] = []
        for index, request in enumerate(requests):
            found = existing.get(request.checksum)
            if found is not None:
                results[index] = AssembleResult("ok", file=found)
            elif not request.chunks:
                results[index] = AssembleResult("not_found")
            else:
                waiting.append(index)
        distinct = list(dict.fromkeys(c for index in waiting for c in requests[index].chunks))
        sizes = await self.__store.owned_sizes(target.organization_id, distinct)
        absent = [checksum for checksum in distinct if checksum not in sizes]
        del distinct
        on_the_way: set[str] = set()
        for batch in _batches(absent, PENDING_BATCH):
            on_the_way |= await self.__pending.which(target.organization_id, batch)
        plan = VerifyPlan(self.limits.max_verify_bytes)
        ready: list[int] = []
        refused = 0
        for index in waiting:
            chunks = requests[index].chunks
            missing = [c for c in dict.fromkeys(chunks) if c not in sizes]
            if missing:
                lost = tuple(c for c in missing if c not in on_the_way)
                results[index] = (
                    AssembleResult("not_found", missing_chunks=lost)
                    if lost
                    else AssembleResult("created")
                )
                continue
            cost = chunk_list_cost(chunks, sizes)
            if plan.admit(chunks, cost):
                ready.append(index)
                continue
            refused += 1
            detail = _too_large if cost > plan.max_bytes else _over_budget
            results[index] = AssembleResult("error", detail=detail(plan.max_bytes))
        del sizes
        if ready:
            wanted = plan.chunks()
            paths = await self.__store.paths(target.organization_id, wanted)
            if len(paths) != len(wanted):
                # Owned a moment ago: only a blob deleted since (never within 24 h) gets here.
                raise StorageError("get", None, "a blob of the request vanished while it ran")
            verification = await asyncio.to_thread(
                verify_chunk_lists, self.__storage, paths, plan.lists, self.limits.cache_bytes
            )
            self.__log(target, verification, refused)
            for index in ready:
                results[index] = await self.__finish(
                    target, requests[index], verification.results[requests[index].chunks]
                )
        elif refused:
            self.__log(target, None, refused)
        return [result for result in results if result is not None]

    def __log(self, target: Target, verification: Verification | None, refused: int) -> None:
        logger.info(
            "assemble verified",
            extra={
                "organization_id": target.organization_id,
                "kind": target.kind,
                "chunk_lists": len(verification.results) if verification else 0,
                "reads": verification.reads if verification else 0,
                "read_bytes": verification.read_bytes if verification else 0,
                "hashed_bytes": verification.hashed_bytes if verification else 0,
                "files_over_budget": refused,
            },
        )

    async def __finish(
        self, target: Target, request: FileRequest, verified: Verified
    ) -> AssembleResult:
        if verified.checksum != request.checksum:
            return AssembleResult("error", detail=_mismatch(verified.checksum, request.checksum))
        recorded = await self.__store.record(target, request, verified)
        return AssembleResult("ok", file=recorded)


_OWNED_BLOBS: Final = (
    "FROM blobs b JOIN blob_owners o ON o.blob_id = b.id "
    "WHERE o.organization_id = %s AND b.checksum = ANY(%s)"
)
_SIZE_QUERY: Final = "SELECT b.checksum, b.size " + _OWNED_BLOBS
_PATH_QUERY: Final = "SELECT b.checksum, b.path " + _OWNED_BLOBS


class PostgresAssembleStore:
    """`assembled_files`, `blobs` and `blob_owners` (docs/reference.md, Blob store)."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.__pool = pool

    async def assembled(self, target: Target, checksums: Sequence[str]) -> dict[str, AssembledFile]:
        found: dict[str, AssembledFile] = {}
        async with self.__pool.connection() as connection:
            for batch in _batches(checksums):
                cursor = await connection.execute(
                    "SELECT id, name, checksum, size, debug_id, cpu_name FROM assembled_files "
                    "WHERE organization_id = %s AND kind = %s AND coalesce(project_id, 0) = %s "
                    "AND checksum = ANY(%s)",
                    (target.organization_id, target.kind, target.project_id or 0, list(batch)),
                )
                for row in await cursor.fetchall():
                    assembled = _file(row)
                    found[assembled.checksum] = assembled
        return found

    async def owned_sizes(self, organization_id: int, checksums: Sequence[str]) -> dict[str, int]:
        rows = await self.__owned_blobs(organization_id, checksums, _SIZE_QUERY)
        return {checksum: int(size) for checksum, size in rows}

    async def paths(self, organization_id: int, checksums: Sequence[str]) -> dict[str, str]:
        rows = await self.__owned_blobs(organization_id, checksums, _PATH_QUERY)
        return {checksum: str(path) for checksum, path in rows}

    async def __owned_blobs(
        self, organization_id: int, checksums: Sequence[str], query: LiteralString
    ) -> list[tuple[str, Any]]:
        """(checksum, column) of the blobs of `checksums` the organization owns, the
        checksums being the caller's own string objects (no copy per row)."""
        found: list[tuple[str, Any]] = []
        async with self.__pool.connection() as connection:
            for batch in _batches(checksums):
                ours = {checksum: checksum for checksum in batch}
                cursor = await connection.execute(query, (organization_id, list(batch)))
                found.extend(
                    (ours[str(checksum).strip()], value)
                    for checksum, value in await cursor.fetchall()
                )
        return found

    async def record(
        self, target: Target, request: FileRequest, verified: Verified
    ) -> AssembledFile:
        async with self.__pool.connection() as connection:
            cursor = await connection.execute(
                "INSERT INTO assembled_files (organization_id, project_id, kind, name, checksum, "
                "chunks, size, debug_id, cpu_name, projects, release, dist) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING "
                "RETURNING id, name, checksum, size, debug_id, cpu_name",
                (
                    target.organization_id,
                    target.project_id,
                    target.kind,
                    request.name,
                    request.checksum,
                    list(request.chunks),
                    verified.size,
                    request.debug_id,
                    verified.cpu_name,
                    list(target.projects),
                    target.release,
                    target.dist,
                ),
            )
            row = await cursor.fetchone()
        if row is not None:
            return _file(row)
        # A concurrent assemble of the same file recorded it first.
        existing = await self.assembled(target, [request.checksum])
        return existing[request.checksum]


def _file(row: Sequence[Any]) -> AssembledFile:
    return AssembledFile(
        id=int(row[0]),
        name=str(row[1]),
        checksum=str(row[2]).strip(),
        size=int(row[3]),
        debug_id=row[4],
        cpu_name=row[5],
    )


def dif_object(file: AssembledFile) -> dict[str, Any]:
    """The `dif` object of an `ok` debug-file answer (the fields sentry-cli reads)."""
    return {
        "id": str(file.id),
        "uuid": file.debug_id,
        "debugId": file.debug_id,
        "objectName": file.name,
        "cpuName": file.cpu_name or "unknown",
        "sha1": file.checksum,
        "size": file.size,
        "data": {"features": []},
    }

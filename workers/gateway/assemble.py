"""Assembling files from chunks: what sentry-cli's assemble calls get answered
(docs/reference.md, Assemble).

For one file (sha1 of the whole file + the ordered sha1s of its chunks), in this order:
1. already assembled (a row in `assembled_files` for the organization, kind, project and
   checksum) → `ok`;
2. chunks whose blob the organization owns (`blob_owners` join `blobs` by checksum) are
   present; chunks accepted by the gateway but not yet persisted by blob-ingest (`pending`)
   are on their way; anything else is missing → `not_found` with `missingChunks`;
3. some chunks still on their way → `created` (sentry-cli `--wait` polls again);
4. every chunk is a blob → the chunks are read back from storage in order and hashed; a
   whole-file sha1 that differs from the claimed one → `error` with a detail; otherwise the
   file is recorded (name, checksum, ordered chunks, size, organization, project) → `ok`.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from psycopg_pool import AsyncConnectionPool

from workers.common.storage import BlobStorage
from workers.gateway.pending import PendingChunks

State = Literal["not_found", "created", "assembling", "ok", "error"]
Kind = Literal["dif", "artifact_bundle"]

# ELF e_machine → the cpu names sentry-cli prints.
_ELF_MACHINES: Final = {3: "x86", 40: "arm", 62: "x86_64", 183: "arm64", 243: "riscv64"}


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
class _Verified:
    checksum: str
    size: int
    cpu_name: str | None


def cpu_name(head: bytes) -> str | None:
    """The cpu of an ELF file from its first 20 bytes; None for anything else."""
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    order: Literal["little", "big"] = "little" if head[5] == 1 else "big"
    machine = int.from_bytes(head[18:20], order)
    return _ELF_MACHINES.get(machine, "unknown")


def read_and_hash(storage: BlobStorage, paths: Sequence[str]) -> _Verified:
    """sha1 and size of the concatenation of the objects at `paths` (one chunk in memory)."""
    hasher = hashlib.sha1(usedforsecurity=False)
    size = 0
    head = b""
    for path in paths:
        data = storage.get(path)
        if not head:
            head = data[:20]
        hasher.update(data)
        size += len(data)
    return _Verified(hasher.hexdigest(), size, cpu_name(head))


class Assembler:
    def __init__(
        self, pool: AsyncConnectionPool, pending: PendingChunks, storage: BlobStorage
    ) -> None:
        self.__pool = pool
        self.__pending = pending
        self.__storage = storage

    async def assemble(self, target: Target, request: FileRequest) -> AssembleResult:
        existing = await self.__find(target, request.checksum)
        if existing is not None:
            return AssembleResult("ok", file=existing)
        if not request.chunks:
            return AssembleResult("not_found")
        owned = await self.__owned_paths(target.organization_id, request.chunks)
        absent = [checksum for checksum in dict.fromkeys(request.chunks) if checksum not in owned]
        if absent:
            on_the_way = await self.__pending.which(target.organization_id, absent)
            missing = tuple(checksum for checksum in absent if checksum not in on_the_way)
            if missing:
                return AssembleResult("not_found", missing_chunks=missing)
            return AssembleResult("created")
        verified = await asyncio.to_thread(
            read_and_hash, self.__storage, [owned[checksum] for checksum in request.chunks]
        )
        if verified.checksum != request.checksum:
            return AssembleResult(
                "error",
                detail=(
                    f"checksum mismatch: the chunks make a file with sha1 {verified.checksum}, "
                    f"not {request.checksum}"
                ),
            )
        recorded = await self.__record(target, request, verified)
        return AssembleResult("ok", file=recorded)

    async def __owned_paths(self, organization_id: int, chunks: Sequence[str]) -> dict[str, str]:
        async with self.__pool.connection() as connection:
            cursor = await connection.execute(
                "SELECT b.checksum, b.path FROM blobs b "
                "JOIN blob_owners o ON o.blob_id = b.id "
                "WHERE o.organization_id = %s AND b.checksum = ANY(%s)",
                (organization_id, sorted(set(chunks))),
            )
            rows = await cursor.fetchall()
        return {str(checksum).strip(): str(path) for checksum, path in rows}

    async def __find(self, target: Target, checksum: str) -> AssembledFile | None:
        async with self.__pool.connection() as connection:
            cursor = await connection.execute(
                "SELECT id, name, checksum, size, debug_id, cpu_name FROM assembled_files "
                "WHERE organization_id = %s AND kind = %s AND coalesce(project_id, 0) = %s "
                "AND checksum = %s",
                (target.organization_id, target.kind, target.project_id or 0, checksum),
            )
            row = await cursor.fetchone()
        return None if row is None else _file(row)

    async def __record(
        self, target: Target, request: FileRequest, verified: _Verified
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
        existing = await self.__find(target, request.checksum)
        assert existing is not None
        return existing


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

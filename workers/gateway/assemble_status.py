"""The assemble status cache in Redis, the gateway's side (workers/common/assemble_requests.py
holds the key and value; docs/gateway.md, Assemble).

The assemble worker writes a file's status on every change; the gateway reads the statuses
of a request's files with one `MGET`, and writes `created` for the files it enqueues, before
it produces their requests (as upstream's `DifAssembleEndpoint` calls `set_assemble_status`
before `apply_async`): the worker only writes after it read the request, so `created` never
overwrites a later state. Entries live `STATUS_TTL_SECONDS` (10 minutes, as upstream).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from redis.asyncio import Redis

from workers.common.assemble_requests import (
    STATUS_TTL_SECONDS,
    AssembleStatus,
    decode_status,
    encode_status,
    status_key,
)
from workers.gateway.assemble_types import Target

#: Keys per `MGET` (a request has at most 1,000 files).
STATUS_BATCH: Final = 1_000
_CREATED: Final = encode_status("created")


def _key(target: Target, checksum: str) -> str:
    return status_key(target.organization_id, target.kind, target.project_id, checksum)


class AssembleStatusCache:
    def __init__(self, redis: Redis, ttl_seconds: int = STATUS_TTL_SECONDS) -> None:
        self.__redis = redis
        self.__ttl = ttl_seconds

    async def read(self, target: Target, checksums: Sequence[str]) -> dict[str, AssembleStatus]:
        """The cached status of each of `checksums` that has one."""
        found: dict[str, AssembleStatus] = {}
        for start in range(0, len(checksums), STATUS_BATCH):
            batch = checksums[start : start + STATUS_BATCH]
            values = await self.__redis.mget([_key(target, checksum) for checksum in batch])
            for checksum, value in zip(batch, values, strict=True):
                status = decode_status(value if isinstance(value, bytes) else None)
                if status is not None:
                    found[checksum] = status
        return found

    async def set_created(self, target: Target, checksums: Sequence[str]) -> None:
        await self.__write(target, checksums, forget=False)

    async def forget(self, target: Target, checksums: Sequence[str]) -> None:
        """Drop the statuses of files whose requests Kafka did not take."""
        await self.__write(target, checksums, forget=True)

    async def __write(self, target: Target, checksums: Sequence[str], *, forget: bool) -> None:
        if not checksums:
            return
        async with self.__redis.pipeline(transaction=False) as pipe:
            for checksum in checksums:
                if forget:
                    pipe.delete(_key(target, checksum))
                else:
                    pipe.set(_key(target, checksum), _CREATED, ex=self.__ttl)
            await pipe.execute()

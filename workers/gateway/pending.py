"""Chunks accepted by the gateway but maybe not yet persisted by blob-ingest (Redis).

After Kafka acknowledged a request's chunks the gateway sets
`workers:gateway:pending:{org_id}:{sha1}` with a TTL, before it answers 200. Assemble then
reports such a chunk as on its way (`created`), never as `not_found`: sentry-cli fails with
"Some uploaded files are now missing on the server" on a `not_found` after uploading. The TTL
(default 1 h) bounds how long a chunk that blob-ingest refused keeps that status; blob-ingest
normally persists a chunk within seconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from redis.asyncio import Redis

KEY_PREFIX: Final = "workers:gateway:pending"
DEFAULT_TTL_SECONDS: Final = 3600


def pending_key(organization_id: int, checksum: str) -> str:
    return f"{KEY_PREFIX}:{organization_id}:{checksum}"


class PendingChunks:
    def __init__(self, redis: Redis, ttl_seconds: int = DEFAULT_TTL_SECONDS) -> None:
        self.__redis = redis
        self.__ttl = ttl_seconds

    async def mark(self, organization_id: int, checksums: Iterable[str]) -> None:
        unique = sorted(set(checksums))
        if not unique:
            return
        async with self.__redis.pipeline(transaction=False) as pipe:
            for checksum in unique:
                pipe.set(pending_key(organization_id, checksum), b"1", ex=self.__ttl)
            await pipe.execute()

    async def which(self, organization_id: int, checksums: Sequence[str]) -> set[str]:
        """The subset of `checksums` marked pending for the organization."""
        unique = sorted(set(checksums))
        if not unique:
            return set()
        values = await self.__redis.mget([pending_key(organization_id, c) for c in unique])
        return {checksum for checksum, value in zip(unique, values, strict=True) if value}

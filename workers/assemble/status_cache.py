"""The worker's side of the assemble status cache (workers/common/assemble_requests.py): each
state a task reaches is written for 10 minutes, after PostgreSQL has it."""

from __future__ import annotations

from redis import Redis

from workers.common.assemble_requests import (
    STATUS_TTL_SECONDS,
    AssembleState,
    encode_status,
    status_key,
)


class StatusCache:
    def __init__(self, redis: Redis, ttl_seconds: int = STATUS_TTL_SECONDS) -> None:
        self.__redis = redis
        self.__ttl = ttl_seconds

    def set(
        self,
        organization_id: int,
        kind: str,
        project_id: int | None,
        checksum: str,
        state: AssembleState,
        detail: str | None = None,
    ) -> None:
        self.__redis.set(
            status_key(organization_id, kind, project_id, checksum),
            encode_status(state, detail),
            ex=self.__ttl,
        )

"""Which organization ids exist, cached: validation runs per message, lookups should not."""

from __future__ import annotations

import time
from collections.abc import Callable

from psycopg_pool import ConnectionPool

from workers.common.database_outage import DatabaseOutage

# Organizations are rarely deleted; a deleted one is noticed within this many seconds.
KNOWN_TTL_SECONDS = 300.0


class KnownOrganizations:
    def __init__(
        self,
        pool: ConnectionPool,
        ttl_seconds: float = KNOWN_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        outage: DatabaseOutage | None = None,
    ) -> None:
        self.__pool = pool
        self.__outage = outage if outage is not None else DatabaseOutage()
        self.__ttl = ttl_seconds
        self.__clock = clock
        self.__known_until: dict[int, float] = {}

    def exists(self, organization_id: int) -> bool:
        now = self.__clock()
        if self.__known_until.get(organization_id, 0.0) > now:
            return True
        if not self.__outage.run("organization", lambda: self.__lookup(organization_id)):
            self.__known_until.pop(organization_id, None)
            return False
        self.__known_until[organization_id] = now + self.__ttl
        return True

    def __lookup(self, organization_id: int) -> bool:
        with self.__pool.connection() as connection:
            row = connection.execute(
                "SELECT 1 FROM organizations WHERE id = %s", (organization_id,)
            ).fetchone()
        return row is not None

"""Upload slots: how many upload requests buffer chunks at once, shared fairly between
organizations, with a bounded wait (docs/gateway.md, Slow and greedy clients).

Each slot holds at most one request's chunks (about 33 MiB), so the slots bound the memory of
the process. One organization holds at most `per_organization` of them, so a burst (or a
hostile client) of one organization cannot take them all. Waiting requests get free slots
organization by organization in turn, oldest first within one organization. A request that
waits longer than `max_wait_seconds` gives up with `NoUploadSlot` (the gateway answers 503
with `Retry-After`).
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

DEFAULT_MAX_WAIT_SECONDS: Final = 10.0


class NoUploadSlot(Exception):
    """No slot within the wait; `retry_after_seconds` is what the client is told."""

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(f"no upload slot, retry after {retry_after_seconds} s")
        self.retry_after_seconds = retry_after_seconds


def default_share(capacity: int) -> int:
    """Half the slots (at least one): two busy organizations can still fill them all."""
    return max(1, math.ceil(capacity / 2))


class UploadSlots:
    def __init__(
        self,
        capacity: int,
        per_organization: int | None = None,
        max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.per_organization = min(
            capacity, per_organization if per_organization else default_share(capacity)
        )
        self.max_wait_seconds = max_wait_seconds
        self.__in_use = 0
        self.__held: dict[int, int] = {}
        # Organizations in the order they are served next; each with its waiters, oldest first.
        self.__waiting: OrderedDict[int, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def in_use(self) -> int:
        return self.__in_use

    @property
    def waiting(self) -> int:
        return sum(len(waiters) for waiters in self.__waiting.values())

    def held_by(self, organization_id: int) -> int:
        return self.__held.get(organization_id, 0)

    @asynccontextmanager
    async def slot(self, organization_id: int) -> AsyncIterator[None]:
        """Hold one slot for `organization_id` inside the block; `NoUploadSlot` after the wait."""
        await self.__acquire(organization_id)
        try:
            yield
        finally:
            self.__release(organization_id)

    def __may_take(self, organization_id: int) -> bool:
        return (
            self.__in_use < self.capacity and self.held_by(organization_id) < self.per_organization
        )

    async def __acquire(self, organization_id: int) -> None:
        # A newcomer never overtakes a waiting request of its own organization.
        if organization_id not in self.__waiting and self.__may_take(organization_id):
            self.__take(organization_id)
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.__waiting.setdefault(organization_id, deque()).append(granted)
        try:
            await asyncio.wait_for(asyncio.shield(granted), self.max_wait_seconds)
        except TimeoutError:
            if granted.done() and not granted.cancelled():
                return  # granted as the wait ran out: keep it
            self.__forget(organization_id, granted)
            raise NoUploadSlot(max(1, math.ceil(self.max_wait_seconds / 2))) from None
        except BaseException:
            if granted.done() and not granted.cancelled():
                self.__release(organization_id)  # granted, but the request went away
            else:
                self.__forget(organization_id, granted)
            raise

    def __take(self, organization_id: int) -> None:
        self.__in_use += 1
        self.__held[organization_id] = self.held_by(organization_id) + 1

    def __forget(self, organization_id: int, granted: asyncio.Future[None]) -> None:
        granted.cancel()
        waiters = self.__waiting.get(organization_id)
        if waiters is None:
            return
        if granted in waiters:
            waiters.remove(granted)
        if not waiters:
            del self.__waiting[organization_id]

    def __release(self, organization_id: int) -> None:
        self.__in_use -= 1
        held = self.held_by(organization_id) - 1
        if held:
            self.__held[organization_id] = held
        else:
            self.__held.pop(organization_id, None)
        self.__hand_out()

    def __hand_out(self) -> None:
        """Give free slots to waiting organizations in turn (round robin)."""
        while self.__in_use < self.capacity:
            chosen = next((org for org in self.__waiting if self.__may_take(org)), None)
            if chosen is None:
                return
            waiters = self.__waiting.pop(chosen)
            granted = waiters.popleft()
            if waiters:
                self.__waiting[chosen] = waiters  # to the back of the line
            self.__take(chosen)
            granted.set_result(None)

"""Reading an upload body at a pace: a slow client must not hold an upload slot for ever
(docs/gateway.md, Slow and greedy clients).

`paced` wraps the ASGI body stream: each piece must arrive within `idle_seconds` of the
previous one, and once `grace_seconds` have passed the body must have come at
`min_bytes_per_second` on average. Otherwise `SlowUpload` is raised (the gateway answers 408
and closes the connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

BODY_IDLE_TIMEOUT: Final = "body_idle_timeout"
BODY_TOO_SLOW: Final = "body_too_slow"


@dataclass(frozen=True)
class BodyPace:
    idle_seconds: float = 15.0
    min_bytes_per_second: int = 32 * 1024
    grace_seconds: float = 10.0


class SlowUpload(Exception):
    """The body stalled or came too slowly; `reason` is a metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def paced(body: AsyncIterator[bytes], pace: BodyPace) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    received = 0
    while True:
        try:
            piece = await asyncio.wait_for(anext(body), pace.idle_seconds)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise SlowUpload(BODY_IDLE_TIMEOUT) from None
        received += len(piece)
        elapsed = loop.time() - started
        if elapsed > pace.grace_seconds and received < pace.min_bytes_per_second * elapsed:
            raise SlowUpload(BODY_TOO_SLOW)
        yield piece

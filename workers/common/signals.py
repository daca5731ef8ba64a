"""Shutdown signals: SIGINT and SIGTERM, handled together, the previous handlers restored.

Every long-running command of the fleet (a consumer process, the `--processes N`
supervisor, the gateway) stops on either signal through `handling_shutdown_signals`.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Final

SHUTDOWN_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)

SignalHandler = Callable[[int, FrameType | None], None]


@contextlib.contextmanager
def handling_shutdown_signals(handler: SignalHandler) -> Iterator[None]:
    """SIGINT and SIGTERM call `handler` inside the block; the previous handlers come back
    when it ends."""
    previous = {signum: signal.signal(signum, handler) for signum in SHUTDOWN_SIGNALS}
    try:
        yield
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)


def exit_on_next_shutdown_signal() -> None:
    """Give SIGINT and SIGTERM back their default action: a second signal ends the process
    at once."""
    for signum in SHUTDOWN_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)

"""`CallWatchdog`: ends the process when a blocking client call overruns its own timeout.

librdkafka's transactional calls take a timeout, but `send_offsets_to_transaction` can block
far past it when the group coordinator goes away mid-call (librdkafka issue #5456, seen here
when the broker is killed during a commit). A process stuck inside a C call cannot be woken,
and would hold its partitions, and its open transaction, until its liveness probe fails. The
watchdog exits it at once instead (exit code 75, "try again"): the restarted process's
`init_transactions` aborts what was left open and reads on from the last commit, so nothing
is lost or billed twice.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Final

logger = logging.getLogger(__name__)

STUCK_EXIT_CODE: Final = 75
DEFAULT_GRACE_SECONDS: Final = 10.0


class CallWatchdog:
    """Guards one blocking call at a time (`with watchdog.guard(name, timeout): call()`)."""

    def __init__(
        self,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        exit_process: Callable[[int], object] = os._exit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.__grace = grace_seconds
        self.__exit = exit_process
        self.__clock = clock
        self.__condition = threading.Condition()
        self.__call: str | None = None
        self.__deadline = 0.0
        self.__thread: threading.Thread | None = None

    @contextlib.contextmanager
    def guard(self, call: str, timeout: float) -> Iterator[None]:
        with self.__condition:
            self.__call = call
            self.__deadline = self.__clock() + timeout + self.__grace
            if self.__thread is None:
                self.__thread = threading.Thread(
                    target=self.__watch, name="call-watchdog", daemon=True
                )
                self.__thread.start()
            self.__condition.notify()
        try:
            yield
        finally:
            with self.__condition:
                self.__call = None

    def __watch(self) -> None:
        with self.__condition:
            while True:
                if self.__call is None:
                    self.__condition.wait()
                    continue
                left = self.__deadline - self.__clock()
                if left > 0:
                    self.__condition.wait(left)
                    continue
                logger.critical(
                    "a blocking call overran its timeout; exiting so a new process takes over",
                    extra={"call": self.__call, "exit_code": STUCK_EXIT_CODE},
                )
                logging.shutdown()
                self.__exit(STUCK_EXIT_CODE)
                return

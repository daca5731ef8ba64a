"""`RetryWindow`: work tried again with exponential backoff while it fails in a way that
passes, for up to a window of seconds. Used to ride out a PostgreSQL restart
(`database_outage.py`) and a Kafka broker failover (`commit_retry.py`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from workers.common.backoff import Backoff

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RetryWindow:
    """`run(step, work)`: `work()`, again after each error `retriable` accepts, until it
    succeeds, the next wait would pass the window of `seconds`, or `stopping` is set (the
    worker is stopping); then the last error is raised. Other errors are raised at once."""

    def __init__(
        self,
        retriable: Callable[[BaseException], bool],
        seconds: float,
        description: str,
        backoff: Callable[[], Backoff] = Backoff,
        stopping: threading.Event | None = None,
    ) -> None:
        self.__retriable = retriable
        self.__seconds = seconds
        self.__description = description
        self.__backoff = backoff
        self.__stopping = stopping if stopping is not None else threading.Event()

    def run(self, step: str, work: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.__seconds
        backoff = self.__backoff()
        while True:
            try:
                return work()
            except Exception as error:
                if not self.__retriable(error):
                    raise
                delay = backoff.next_delay()
                if time.monotonic() + delay > deadline or self.__stopping.is_set():
                    raise
                logger.warning(
                    f"{self.__description}; retrying",
                    extra={"step": step, "error": _describe(error), "retry_in_s": delay},
                )
                self.__stopping.wait(delay)


def _describe(error: BaseException) -> str:
    """The error's class, and for a Kafka error its code name (never a message: it may hold
    connection details)."""
    code = getattr(error.args[0], "name", None) if error.args else None
    return f"{type(error).__name__}({code()})" if callable(code) else type(error).__name__

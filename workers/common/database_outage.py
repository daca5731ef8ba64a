"""Riding out a PostgreSQL outage: database work tried again with exponential backoff while
the connection fails, for up to a window (docs/blob-ingest.md, Faults).

A restart, a failover or a network cut shows up as `psycopg.OperationalError` (a pool that
cannot hand out a connection raises its `PoolTimeout` subclass; a deadlock or serialization
failure is one too, and worth another try). Other errors the server sends about the statement
are raised at once. The caller decides what a failed attempt leaves behind: for a
transaction, a lost connection leaves its outcome in doubt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

import psycopg

from workers.common.backoff import Backoff
from workers.common.retry_window import RetryWindow

#: A PostgreSQL restart or failover takes seconds.
DEFAULT_DATABASE_OUTAGE_SECONDS: Final = 60.0


def is_lost_connection(error: BaseException) -> bool:
    return isinstance(error, psycopg.OperationalError)


class DatabaseOutage(RetryWindow):
    def __init__(
        self,
        seconds: float = DEFAULT_DATABASE_OUTAGE_SECONDS,
        backoff: Callable[[], Backoff] = Backoff,
        stopping: threading.Event | None = None,
    ) -> None:
        super().__init__(is_lost_connection, seconds, "database unavailable", backoff, stopping)

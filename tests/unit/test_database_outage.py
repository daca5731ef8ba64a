"""`DatabaseOutage.run`: lost connections are retried with backoff within the window; any
other error, the end of the window, or stopping raise."""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
import pytest

from harness.waiting import wait_for
from workers.common.backoff import Backoff
from workers.common.database_outage import DatabaseOutage


class FlakyWork:
    """Raises `error()` on its first `times` calls, then returns "done"."""

    def __init__(self, times: int, error: Callable[[], Exception]) -> None:
        self.times = times
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error()
        return "done"


def lost_connection() -> Exception:
    return psycopg.OperationalError("server closed the connection unexpectedly")


def quick() -> Backoff:
    return Backoff(0.001, 0.004)


def test_lost_connections_are_retried_until_the_work_succeeds() -> None:
    work = FlakyWork(5, lost_connection)
    assert DatabaseOutage(60, backoff=quick).run("test", work) == "done"
    assert work.calls == 6


def test_an_error_about_the_statement_is_raised_at_once() -> None:
    work = FlakyWork(1, lambda: psycopg.errors.UniqueViolation("duplicate key"))
    with pytest.raises(psycopg.errors.UniqueViolation):
        DatabaseOutage(60, backoff=quick).run("test", work)
    assert work.calls == 1


def test_the_error_is_raised_when_the_next_wait_would_pass_the_window() -> None:
    work = FlakyWork(1_000_000, lost_connection)
    with pytest.raises(psycopg.OperationalError, match="closed the connection"):
        DatabaseOutage(0.05, backoff=lambda: Backoff(0.02, 0.02)).run("test", work)
    # Waits of 0.02 s within 0.05 s: the first call and at most two retries.
    assert 1 <= work.calls <= 3


def test_stopping_ends_a_wait_at_once_with_the_error() -> None:
    stopping = threading.Event()
    outage = DatabaseOutage(3600, backoff=lambda: Backoff(3600, 3600), stopping=stopping)
    work = FlakyWork(1_000_000, lost_connection)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            outage.run("test", work)
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: work.calls >= 1, 30, "the first failed attempt")
    stopping.set()
    thread.join(30)
    assert not thread.is_alive()
    assert [type(error) for error in raised] == [psycopg.OperationalError]
    assert work.calls == 1

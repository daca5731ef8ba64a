"""Exponential backoff for retries: billing's flag work and outcome re-produces, blob-ingest's
database work."""

from __future__ import annotations

from typing import Final

DEFAULT_BACKOFF_INITIAL_SECONDS: Final = 0.1
DEFAULT_BACKOFF_MAX_SECONDS: Final = 5.0


class Backoff:
    """`initial` seconds, doubling on every failure up to `maximum`; `reset()` on success."""

    __slots__ = ("_current", "initial", "maximum")

    def __init__(
        self,
        initial: float = DEFAULT_BACKOFF_INITIAL_SECONDS,
        maximum: float = DEFAULT_BACKOFF_MAX_SECONDS,
    ) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("backoff needs 0 < initial <= maximum")
        self.initial = initial
        self.maximum = maximum
        self._current = initial

    def next_delay(self) -> float:
        delay = self._current
        self._current = min(self._current * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self._current = self.initial

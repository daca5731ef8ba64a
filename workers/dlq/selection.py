"""Which DLQ messages a command acts on: one worker's, by reason and time (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from workers.common.moments import milliseconds
from workers.dlq.letters import DeadLetter


@dataclass(frozen=True)
class Selection:
    """DLQ messages of `worker` in `dlq_topic`, optionally only those of one reason and
    dead-lettered within [since, until).

    A message counts as the worker's when its `worker` header names it, or has none (copies
    written before the header existed). `reason` matches the reason's code (`invalid_json`)
    or the whole reason. The time is the DLQ copy's Kafka timestamp: when it was
    dead-lettered.
    """

    worker: str
    dlq_topic: str
    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, letter: DeadLetter) -> bool:
        if letter.worker not in (self.worker, None):
            return False
        if self.reason is not None and self.reason not in (letter.reason_code, letter.reason):
            return False
        if self.since is None and self.until is None:
            return True
        stamp = letter.timestamp_ms
        if stamp is None:
            return False
        if self.since is not None and stamp < milliseconds(self.since):
            return False
        return self.until is None or stamp < milliseconds(self.until)

    @property
    def since_ms(self) -> int | None:
        return None if self.since is None else milliseconds(self.since)

    def describe(self) -> dict[str, str | None]:
        """The selection as the audit row records it."""
        return {
            "dlq_topic": self.dlq_topic,
            "reason": self.reason,
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
        }

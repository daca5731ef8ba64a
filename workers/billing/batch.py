"""The batch a run of input messages becomes: outcomes to produce, dead letters, offsets."""

from __future__ import annotations

import logging
import time
from typing import Any

from arroyo.types import Partition

from workers.billing.flags import ProjectKey
from workers.common.message_runs import RawMessage

logger = logging.getLogger(__name__)


class OutcomeBatch:
    """What `TranslateOutcomes` hands to `DeliverOutcomes` for a run of input messages."""

    __slots__ = ("by_category", "candidates", "dead_letters", "messages", "payloads")

    def __init__(
        self,
        payloads: list[dict[str, Any]],
        by_category: dict[int, list[int]],
        candidates: frozenset[ProjectKey],
        messages: int,
        dead_letters: list[DeadLetter] | None = None,
    ) -> None:
        # `{"value": outcome bytes}` per outcome, as `produce_batch` takes them.
        self.payloads = payloads
        # category -> [outcomes, quantity]
        self.by_category = by_category
        # Custom-metric projects of these messages this process does not know to be flagged.
        self.candidates = candidates
        self.messages = messages
        # Invalid messages of runs, to be copied to the DLQ topic before the offsets move on.
        self.dead_letters: list[DeadLetter] = dead_letters if dead_letters is not None else []


class DeadLetter:
    """An invalid message of a `MessageRun`, with where it came from and why it is invalid."""

    __slots__ = ("message", "partition", "reason")

    def __init__(self, message: RawMessage, partition: Partition, reason: str) -> None:
        self.message = message
        self.partition = partition
        self.reason = reason


def remaining(deadline: float | None) -> float | None:
    """Seconds left until `deadline` (a `time.monotonic()` value), never negative."""
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)

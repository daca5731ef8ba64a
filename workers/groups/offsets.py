"""Offsets of a group's partitions, their lag, and where a reset moves them (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ResetKind = Literal["earliest", "latest", "datetime", "shift"]


@dataclass(frozen=True)
class PartitionOffsets:
    """One partition of a topic the group reads: its low and high watermarks and the group's
    committed offset (None: the group never committed one)."""

    topic: str
    partition: int
    low: int
    high: int
    committed: int | None

    @property
    def lag(self) -> int:
        """Messages the group has yet to commit; without a commit it starts at the low
        watermark (the fleet's `--auto-offset-reset earliest`)."""
        start = self.low if self.committed is None else max(self.committed, self.low)
        return max(self.high - start, 0)


@dataclass(frozen=True)
class Reset:
    """Where `reset-offsets` moves each partition: its low watermark (`earliest`), its high
    watermark (`latest`), the first message at or after a time (`datetime`: the offset Kafka
    found for it, or the high watermark when no message is that recent), or the committed
    offset (else the low watermark) moved by `shift` messages, kept within the watermarks."""

    kind: ResetKind
    shift: int = 0

    def describe(self) -> str:
        return f"shift {self.shift:+d}" if self.kind == "shift" else f"to {self.kind}"


def reset_target(offsets: PartitionOffsets, reset: Reset, at_time: int | None = None) -> int:
    """The offset `reset` commits for `offsets`; `at_time` is Kafka's offset for the reset's
    time (`datetime` only; None or negative: no message at or after it)."""
    if reset.kind == "earliest":
        return offsets.low
    if reset.kind == "latest":
        return offsets.high
    if reset.kind == "datetime":
        if at_time is None or at_time < 0:
            return offsets.high
        return min(max(at_time, offsets.low), offsets.high)
    base = offsets.low if offsets.committed is None else offsets.committed
    return min(max(base + reset.shift, offsets.low), offsets.high)

"""`workers dlq list`: per worker, its DLQ messages counted by reason code, with the oldest
and newest and how many were replayed already."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from workers.common.columns import columns
from workers.common.moments import format_moment
from workers.dlq.letters import DeadLetter, Position

UNATTRIBUTED = "?"


@dataclass
class ReasonSummary:
    reason: str
    count: int = 0
    replayed: int = 0
    oldest_ms: int | None = None
    newest_ms: int | None = None

    def add(self, letter: DeadLetter, replayed: bool) -> None:
        self.count += 1
        self.replayed += replayed
        stamp = letter.timestamp_ms
        if stamp is not None:
            self.oldest_ms = stamp if self.oldest_ms is None else min(self.oldest_ms, stamp)
            self.newest_ms = stamp if self.newest_ms is None else max(self.newest_ms, stamp)


@dataclass
class WorkerDlq:
    worker: str
    dlq_topic: str
    reasons: dict[str, ReasonSummary] = field(default_factory=dict)

    def add(self, letter: DeadLetter, replayed: bool) -> None:
        code = letter.reason_code
        self.reasons.setdefault(code, ReasonSummary(code)).add(letter, replayed)


def summarize(
    dlq_topic: str,
    owners: Sequence[str],
    letters: Iterable[DeadLetter],
    claims: Mapping[Position, str],
) -> list[WorkerDlq]:
    """One summary per worker of `owners` (the workers whose DLQ topic this is), plus one per
    other worker named in the messages' `worker` header. A message without the header goes to
    the only owner, or to `UNATTRIBUTED` when several workers share the topic."""
    found = {owner: WorkerDlq(owner, dlq_topic) for owner in owners}
    fallback = owners[0] if len(owners) == 1 else UNATTRIBUTED
    for letter in letters:
        worker = letter.worker or fallback
        summary = found.setdefault(worker, WorkerDlq(worker, dlq_topic))
        summary.add(letter, letter.position in claims)
    return [found[name] for name in sorted(found)]


def list_lines(summaries: Sequence[WorkerDlq], replay_counts_known: bool = True) -> list[str]:
    rows = [("WORKER", "DLQ TOPIC", "REASON", "COUNT", "REPLAYED", "OLDEST", "NEWEST")]
    for summary in summaries:
        if not summary.reasons:
            rows.append((summary.worker, summary.dlq_topic, "(empty)", "0", "-", "-", "-"))
        ordered = sorted(summary.reasons.values(), key=lambda r: (-r.count, r.reason))
        for reason in ordered:
            rows.append(
                (
                    summary.worker,
                    summary.dlq_topic,
                    reason.reason,
                    str(reason.count),
                    str(reason.replayed) if replay_counts_known else "?",
                    format_moment(reason.oldest_ms),
                    format_moment(reason.newest_ms),
                )
            )
    return columns(rows, {3, 4})

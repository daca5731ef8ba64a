"""DLQ messages built in memory, as `dlq_headers` makes them, for the DLQ tools' unit tests."""

from __future__ import annotations

from collections.abc import Sequence

from arroyo.types import Partition, Topic

from workers.common.dlq import dlq_headers
from workers.dlq.letters import DeadLetter, Header, Position

DLQ_TOPIC = "test-dlq"
INPUT_TOPIC = "test-input"


def dead_letter(
    offset: int,
    reason: str = "invalid_json: payload is not valid JSON",
    worker: str | None = "billing",
    timestamp_ms: int | None = 1_700_000_000_000,
    partition: int = 0,
    value: bytes | None = b"{not json",
    key: bytes | None = None,
    headers: Sequence[Header] = (),
    original: tuple[int, int] = (1, 100),
) -> DeadLetter:
    """The DLQ copy at `DLQ_TOPIC:partition:offset` of `INPUT_TOPIC:original` (partition,
    offset); `worker=None` leaves the `worker` header out."""
    added: list[Header] = list(
        dlq_headers(
            [(name, value or b"") for name, value in headers],
            Partition(Topic(INPUT_TOPIC), original[0]),
            original[1],
            reason,
            worker or "",
        )
    )
    if worker is None:
        added = [(name, value) for name, value in added if name != "worker"]
    return DeadLetter(
        Position(DLQ_TOPIC, partition, offset), timestamp_ms, key, value, tuple(added)
    )

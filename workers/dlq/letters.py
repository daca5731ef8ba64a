"""A DLQ message as the operator's commands see it: where it sits, why it is there, and the
message it was made of (docs/reference.md, DLQ messages).

A DLQ copy is the original message (key, value, headers) with `DLQ_HEADER_NAMES` appended, so
the original headers are the copy's headers without the last occurrence of each of those.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

from workers.common.dlq import DLQ_HEADER_NAMES, dlq_origin, reason_code

Header = tuple[str, bytes | None]

#: Added to a replayed message: `<dlq topic>:<partition>:<offset>` of the copy it came from.
REPLAYED_FROM_HEADER: Final = "dlq_replayed_from"


@dataclass(frozen=True)
class Position:
    """Where a message sits in Kafka."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


def _last(headers: Sequence[Header], name: str) -> bytes | None:
    for key, value in reversed(headers):
        if key == name:
            return value
    return None


def original_headers(headers: Sequence[Header]) -> list[Header]:
    """`headers` of a DLQ copy without the ones `dlq_headers` appended (the last of each)."""
    kept = list(headers)
    for name in DLQ_HEADER_NAMES:
        for index in range(len(kept) - 1, -1, -1):
            if kept[index][0] == name:
                del kept[index]
                break
    return kept


@dataclass(frozen=True)
class DeadLetter:
    position: Position
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]

    @classmethod
    def from_message(cls, message: Message) -> DeadLetter:
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None
        assert partition is not None
        assert offset is not None
        kind, stamp = message.timestamp()
        key, value = message.key(), message.value()
        return cls(
            Position(topic, partition, offset),
            stamp if kind != TIMESTAMP_NOT_AVAILABLE and stamp >= 0 else None,
            key.encode() if isinstance(key, str) else key,
            value.encode() if isinstance(value, str) else value,
            _headers(message),
        )

    @property
    def reason(self) -> str:
        raw = _last(self.headers, "reason")
        return raw.decode("utf-8", "replace") if raw else "unspecified"

    @property
    def reason_code(self) -> str:
        return reason_code(self.reason)

    @property
    def worker(self) -> str | None:
        raw = _last(self.headers, "worker")
        return raw.decode("utf-8", "replace") if raw else None

    @property
    def origin(self) -> Position | None:
        """The message this copy was made of; None when the copy does not say."""
        found = dlq_origin([(key, value) for key, value in self.headers if value is not None])
        return None if found is None else Position(*found)

    def original_headers(self) -> list[Header]:
        return original_headers(self.headers)

    def replay_headers(self) -> list[Header]:
        """The headers a replay produces: the original ones plus `REPLAYED_FROM_HEADER`."""
        return [*self.original_headers(), (REPLAYED_FROM_HEADER, str(self.position).encode())]


def _headers(message: Message) -> tuple[Header, ...]:
    raw = message.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return tuple(
        (name, value.encode() if isinstance(value, str) else value) for name, value in pairs
    )

"""Consuming in runs: one Arroyo message per run of consecutive messages of one partition.

Arroyo's `StreamProcessor` does a fixed amount of work per message it polls (a
`BrokerValue`, a `Message`, metric timers, the strategy's `submit` and `poll`): about
20 µs, several times what a cheap worker spends on the message itself. `RunConsumer`, a
`FetchingConsumer` (`fetching_consumer.py`: librdkafka's batch `consume()`), takes that cost
once per run instead: it hands Arroyo one `BrokerValue[MessageRun]` per partition and fetch,
whose offset is the run's last message.

Semantics a strategy must keep in mind:
- committing the run's `committable` commits every message of the run, so a strategy that
  accepts a run must finish (or durably hand on) all of its messages before that offset is
  committed, exactly as for single messages;
- Arroyo's DLQ buffer works per Arroyo message, so an invalid message inside a run cannot
  be raised as `InvalidMessage`: the strategy dead-letters it itself (see `dlq_headers`);
- fetching, pausing, seeking, errors and commits behave as `FetchingConsumer` describes,
  a run being one item.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Protocol

from arroyo.types import BrokerValue, Partition, Topic

from workers.common.fetching_consumer import (
    DEFAULT_MAX_WAIT_SECONDS,
    FetchingConsumer,
    consumer_error,
)
from workers.common.retry_window import RetryWindow

#: Messages fetched per `consume()` call (librdkafka returns fewer when fewer are ready):
#: the billing chain's batch size. Per fetch and per run there is a fixed cost (Arroyo's
#: loop, the chain's `poll`), so 5,000 gave 5-10 % more throughput than 1,000 in
#: `bench/billing`; a fetch of 5,000 takes about 25 ms of billing work.
DEFAULT_MAX_FETCH_MESSAGES: Final = 5_000

Headers = Sequence[tuple[str, bytes]]


class RawMessage(Protocol):
    """The part of `confluent_kafka.Message` a run's consumer reads."""

    def key(self) -> bytes | None: ...

    def value(self) -> bytes | None: ...

    def headers(self) -> Headers | None: ...

    def offset(self) -> int | None: ...


class MessageRun:
    """Consecutive messages of one partition, in offset order (never empty).

    `epoch` is the consumer's seek count when the run was fetched: a strategy that rewound
    a partition with `RunConsumer.seek` knows a run of an older epoch was read before the
    rewind (a message Arroyo carried over, or polled in the same loop) and must drop it.
    """

    __slots__ = ("epoch", "messages")

    def __init__(self, messages: Sequence[RawMessage], epoch: int = 0) -> None:
        if not messages:
            raise ValueError("a run holds at least one message")
        self.messages = messages
        self.epoch = epoch

    def __repr__(self) -> str:
        return f"MessageRun({len(self.messages)} messages)"


def runs_of(
    messages: Sequence[Any],
    partitions: dict[tuple[str, int], Partition],
    epoch: int = 0,
    topic: str | None = None,
) -> list[BrokerValue[MessageRun] | Exception]:
    """One run per partition for each stretch of `messages` between errors, errors in place.

    librdkafka's position has already moved past every message `consume()` returned, so
    none may be left out: an error event in the middle of a fetch splits it, and the
    messages after it still become runs (Arroyo's processor shrugs off a `TransportError`
    and polls again; they must be there when it does).

    `topic`: the consumer's only topic, when it is subscribed to one. Its messages are then
    grouped by partition alone, and a fetch comes in stretches of one partition, so the
    run of the previous message is reused without a lookup (the hot path of every worker).
    """
    items: list[BrokerValue[MessageRun] | Exception] = []
    grouped: dict[tuple[str, int], list[Any]] = {}
    current: list[Any] = []
    current_index = -1

    def close_stretch() -> None:
        nonlocal current_index
        current_index = -1
        for key, run in grouped.items():
            partition = partitions.get(key)
            if partition is None:
                partition = partitions[key] = Partition(Topic(key[0]), key[1])
            last = run[-1]
            items.append(
                BrokerValue(
                    MessageRun(run, epoch),
                    partition,
                    last.offset(),
                    datetime.utcfromtimestamp(last.timestamp()[1] / 1000.0),
                )
            )
        grouped.clear()

    for message in messages:
        error = message.error()
        if error is not None:
            close_stretch()
            items.append(consumer_error(error, message))
            continue
        if topic is not None:
            index = message.partition()
            if index != current_index:
                current_index = index
                found = grouped.get((topic, index))
                if found is None:
                    found = grouped[topic, index] = []
                current = found
            current.append(message)
            continue
        key = (message.topic(), message.partition())
        run = grouped.get(key)
        if run is None:
            grouped[key] = [message]
        else:
            run.append(message)
    close_stretch()
    return items


class RunConsumer(FetchingConsumer[MessageRun]):
    """Arroyo's `KafkaConsumer`, polled in runs (see the module docstring)."""

    def __init__(
        self,
        configuration: Mapping[str, Any],
        max_fetch_messages: int = DEFAULT_MAX_FETCH_MESSAGES,
        max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
        commit_window: RetryWindow | None = None,
    ) -> None:
        super().__init__(configuration, max_fetch_messages, max_wait_seconds, commit_window)

    def pack(self, messages: Sequence[Any]) -> list[BrokerValue[MessageRun] | Exception]:
        return runs_of(messages, self._partitions, self.epoch, self._topic)

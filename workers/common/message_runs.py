"""Consuming in runs: one Arroyo message per run of consecutive messages of one partition.

Arroyo's `StreamProcessor` does a fixed amount of work per message it polls (a
`BrokerValue`, a `Message`, metric timers, the strategy's `submit` and `poll`): about
20 µs, several times what a cheap worker spends on the message itself. `RunConsumer` takes
that cost once per run instead: it fetches with librdkafka's batch `consume()` and hands
Arroyo one `BrokerValue[MessageRun]` per partition and fetch, whose offset is the run's
last message. Everything else (subscription, assignment, pause/resume, seek, staged
offsets, commits) is Arroyo's own `KafkaConsumer` (as `ClosingKafkaConsumer`), which this
class wraps.

Semantics a strategy must keep in mind:
- committing the run's `committable` commits every message of the run, so a strategy that
  accepts a run must finish (or durably hand on) all of its messages before that offset is
  committed, exactly as for single messages;
- Arroyo's DLQ buffer works per Arroyo message, so an invalid message inside a run cannot
  be raised as `InvalidMessage`: the strategy dead-letters it itself (see `dlq_headers`);
- runs fetched but not handed to Arroyo yet are dropped when their partition is paused,
  seeked or revoked; the read offset (`tell()`) only moves past a run once it is returned,
  so a later fetch starts again from the first dropped message;
- `poll()` waits at most `max_wait_seconds` (50 ms) for a first message, however long
  Arroyo asks, so the strategy's `poll()` keeps running while traffic pauses;
- an error event inside a fetch is raised from `poll()` in its place: the runs before it
  are handed out first, the runs after it by the following polls (none is dropped).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from datetime import datetime
from typing import Any, Final, Protocol

from arroyo.backends.abstract import Consumer
from arroyo.errors import (
    ConsumerError,
    EndOfPartition,
    OffsetOutOfRange,
    RecoverableError,
    TransportError,
)
from arroyo.types import BrokerValue, Partition, Topic
from confluent_kafka import Consumer as ConfluentConsumer
from confluent_kafka import KafkaError

from workers.common.closing_consumer import ClosingKafkaConsumer
from workers.common.commit_retry import commit_failover_window
from workers.common.retry_window import RetryWindow

logger = logging.getLogger(__name__)

#: Messages fetched per `consume()` call (librdkafka returns fewer when fewer are ready):
#: the billing chain's batch size. Per fetch and per run there is a fixed cost (Arroyo's
#: loop, the chain's `poll`), so 5,000 gave 5-10 % more throughput than 1,000 in
#: `bench/billing`; a fetch of 5,000 takes about 25 ms of billing work.
DEFAULT_MAX_FETCH_MESSAGES: Final = 5_000
#: The longest `poll()` waits for a first message, whatever timeout Arroyo passes (1 s).
DEFAULT_MAX_WAIT_SECONDS: Final = 0.05

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


def _consumer_error(error: KafkaError, message: Any) -> Exception:
    """The Arroyo exception Arroyo's `KafkaConsumer.poll` raises for this error."""
    code = error.code()
    if code == KafkaError._PARTITION_EOF:
        partition = Partition(Topic(message.topic()), message.partition())
        return EndOfPartition(partition, message.offset())
    if code == KafkaError._TRANSPORT:
        return TransportError(str(error))
    if code in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET):
        return OffsetOutOfRange(str(error))
    return ConsumerError(str(error))


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
            items.append(_consumer_error(error, message))
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


class RunConsumer(Consumer[MessageRun]):
    """Arroyo's `KafkaConsumer`, polled in runs (see the module docstring)."""

    def __init__(
        self,
        configuration: Mapping[str, Any],
        max_fetch_messages: int = DEFAULT_MAX_FETCH_MESSAGES,
        max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
        commit_window: RetryWindow | None = None,
    ) -> None:
        if max_fetch_messages < 1:
            raise ValueError("max_fetch_messages must be >= 1")
        if max_wait_seconds <= 0:
            raise ValueError("max_wait_seconds must be positive")
        self.__inner = ClosingKafkaConsumer(configuration)
        self.__commit_window = (
            commit_window if commit_window is not None else commit_failover_window()
        )
        # Arroyo keeps its confluent-kafka consumer private; `consume()` is the one call it
        # does not expose. Checked here so an Arroyo upgrade fails loudly, not subtly.
        confluent = getattr(self.__inner, "_KafkaConsumer__consumer", None)
        if not isinstance(confluent, ConfluentConsumer):
            raise RuntimeError(
                "this sentry-arroyo version does not keep its confluent-kafka consumer in "
                "KafkaConsumer.__consumer; RunConsumer needs updating"
            )
        self.__confluent: ConfluentConsumer = confluent
        self.__max_fetch = max_fetch_messages
        self.__max_wait = max_wait_seconds
        self.__ready: deque[BrokerValue[MessageRun] | Exception] = deque()
        self.__partitions: dict[tuple[str, int], Partition] = {}
        # The subscription's only topic (`runs_of`'s fast path); None for several.
        self.__topic: str | None = None
        self.__epoch = 0

    # -- polling ----------------------------------------------------------------------------

    def poll(self, timeout: float | None = None) -> BrokerValue[MessageRun] | None:
        if not self.__ready:
            self.__fetch(timeout)
        offsets: MutableMapping[Partition, int] = self.__inner.tell()  # type: ignore[assignment]
        while self.__ready:
            item = self.__ready.popleft()
            if isinstance(item, Exception):
                # In its place among the runs: what came before it was handed out, what
                # came after it is handed out by the next polls.
                if isinstance(item, RecoverableError):
                    # Arroyo's processor swallows these silently; an operator wants to know.
                    logger.warning("consumer error, polling on", extra={"error": str(item)})
                raise item
            # A rebalance inside `consume()` may have taken the partition away.
            if item.partition in offsets:
                offsets[item.partition] = item.offset + 1
                return item
        return None

    def __fetch(self, timeout: float | None) -> None:
        # `consume(n, timeout)` waits until it has `n` messages or the timeout passed; a
        # poll must instead return as soon as anything is there. So: take what is queued,
        # and only when nothing is, wait for the first message, but never long: Arroyo polls
        # with 1 s, and the chain's own work runs only between polls (closing a batch after
        # its 20 ms, serving delivery reports, releasing offsets). Waiting the full second
        # would hold the last messages before a pause in traffic for up to two of them.
        confluent = self.__confluent
        messages: list[Any] = confluent.consume(self.__max_fetch, 0)
        if not messages and timeout != 0:
            wait = self.__max_wait if timeout is None else min(timeout, self.__max_wait)
            messages = confluent.consume(1, wait)
            if messages and self.__max_fetch > 1:
                messages.extend(confluent.consume(self.__max_fetch - 1, 0))
        if messages:
            self.__ready.extend(runs_of(messages, self.__partitions, self.__epoch, self.__topic))

    def __drop_ready(self, partitions: Sequence[Partition] | Mapping[Partition, int]) -> None:
        if self.__ready:
            dropped = set(partitions)
            self.__ready = deque(
                item
                for item in self.__ready
                if isinstance(item, Exception) or item.partition not in dropped
            )

    # -- subscription and positions: Arroyo's consumer, minus the runs they invalidate ------

    def subscribe(
        self,
        topics: Sequence[Topic],
        on_assign: Callable[[Mapping[Partition, int]], None] | None = None,
        on_revoke: Callable[[Sequence[Partition]], None] | None = None,
    ) -> None:
        def revoked(partitions: Sequence[Partition]) -> None:
            self.__drop_ready(partitions)
            if on_revoke is not None:
                on_revoke(partitions)

        self.__topic = topics[0].name if len(topics) == 1 else None
        self.__inner.subscribe(topics, on_assign=on_assign, on_revoke=revoked)

    def unsubscribe(self) -> None:
        self.__ready.clear()
        self.__inner.unsubscribe()

    def tell(self) -> Mapping[Partition, int]:
        return self.__inner.tell()

    def seek(self, offsets: Mapping[Partition, int]) -> None:
        """Read these partitions again from these offsets; later runs get a new `epoch`.

        librdkafka discards what it prefetched for a partition it seeks; runs already
        handed out are the caller's to drop (see `MessageRun.epoch`).
        """
        self.__drop_ready(offsets)
        self.__inner.seek(offsets)
        self.__epoch += 1

    @property
    def epoch(self) -> int:
        """How many times `seek` was called: the `epoch` of the runs fetched from now on."""
        return self.__epoch

    def group_metadata(self) -> object:
        """The group generation and member id, for `send_offsets_to_transaction` (KIP-447)."""
        metadata: object = self.__confluent.consumer_group_metadata()
        return metadata

    def pause(self, partitions: Sequence[Partition]) -> None:
        # Arroyo's pause seeks the partitions back to `tell()`, which is just past the last
        # run handed out: the dropped runs are fetched again after `resume`.
        self.__drop_ready(partitions)
        self.__inner.pause(partitions)

    def resume(self, partitions: Sequence[Partition]) -> None:
        self.__inner.resume(partitions)

    def paused(self) -> Sequence[Partition]:
        return self.__inner.paused()

    def stage_offsets(self, offsets: Mapping[Partition, int]) -> None:
        self.__inner.stage_offsets(offsets)

    def commit_offsets(self) -> Mapping[Partition, int] | None:
        return self.__commit_window.run("commit", self.__inner.commit_offsets)

    def close(self, timeout: float | None = None) -> None:
        self.__ready.clear()
        self.__inner.close(timeout)

    @property
    def closed(self) -> bool:
        return self.__inner.closed

    @property
    def member_id(self) -> str:
        return self.__inner.member_id

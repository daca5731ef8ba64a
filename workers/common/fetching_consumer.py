"""`FetchingConsumer`: Arroyo's `KafkaConsumer`, fetching with librdkafka's batch `consume()`.

Arroyo's `KafkaConsumer.poll` fetches one message per call, and each call lets go of the GIL
and takes it back. With other threads busy (a storage pool, a pipeline's stages) taking it
back is most of what a poll costs: 90 µs per 4 KiB chunk on blob-ingest's consumer thread, a
quarter of its time (docs/benchmarks.md, Blob ingest). A fetching consumer takes whatever
librdkafka has queued (up to `max_fetch_messages`) in one call and hands it out from a queue
of its own. What one handed-out item is, subclasses decide (`pack`): `RunConsumer`
(`message_runs.py`) hands out a run of messages per partition, `FetchingKafkaConsumer` one
message, as Arroyo's own consumer does. Everything else (subscription, assignment,
pause/resume, seek, staged offsets, commits) is Arroyo's `KafkaConsumer`, which this wraps.

- Items fetched but not handed out yet are dropped when their partition is paused, seeked
  or revoked; the read offset (`tell()`) moves past an item only once it is handed out, so
  a later fetch starts again from the first dropped message (Arroyo's `pause` seeks back
  to `tell()`).
- `poll()` waits at most `max_wait_seconds` (50 ms) for a first message, however long
  Arroyo asks, so the strategy's `poll()` keeps running while traffic pauses.
- An error event inside a fetch is raised from `poll()` in its place: the items before it
  are handed out first, the items after it by the following polls (none is dropped).
- Offset commits are retried through a broker failover (`commit_retry.py`).
- A rebalance while Arroyo's processor is paused by backpressure (docs/rebalancing.md,
  Rebalancing while paused): Arroyo rebuilds the chain, forgets the message it was holding
  and that it had paused, and drops a message returned by the poll that rebalanced it. So a
  poll that rebalanced returns nothing (its items are handed out by the next), and after a
  rebalance while paused the partition of the held message is read again from that message
  and the partitions kept are resumed.
- librdkafka runs rebalance callbacks inside a fetch, so a member serves a change once it has
  handed out what it fetched before (docs/rebalancing.md, When a member hears of a change).
- After a rebalance and after `resume()` the fetchers of the partitions are woken
  (`fetcher_wakeup.py`): librdkafka would leave them asleep for up to a second.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from datetime import datetime
from typing import Any, Final, Generic, TypeVar

from arroyo.backends.abstract import Consumer
from arroyo.backends.kafka import KafkaPayload
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
from workers.common.fetcher_wakeup import wake_fetchers
from workers.common.retry_window import RetryWindow

logger = logging.getLogger(__name__)

TPayload = TypeVar("TPayload")

#: The longest `poll()` waits for a first message, whatever timeout Arroyo passes (1 s).
DEFAULT_MAX_WAIT_SECONDS: Final = 0.05
#: Messages `FetchingKafkaConsumer` takes per `consume()` call (fewer when fewer are queued;
#: librdkafka's queue holds at most `queued.max.messages.kbytes`, 64 MiB, of them).
DEFAULT_MAX_FETCH_SINGLE_MESSAGES: Final = 1_000


def consumer_error(error: KafkaError, message: Any) -> Exception:
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


class FetchingConsumer(Consumer[TPayload], Generic[TPayload]):
    """Arroyo's `KafkaConsumer`, fetched in batches (see the module docstring)."""

    def __init__(
        self,
        configuration: Mapping[str, Any],
        max_fetch_messages: int,
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
        # `consume()` is the one call Arroyo's consumer does not expose.
        self.__confluent: ConfluentConsumer = self.__inner.confluent
        self.__max_fetch = max_fetch_messages
        self.__max_wait = max_wait_seconds
        self.__ready: deque[BrokerValue[TPayload] | Exception] = deque()
        self._partitions: dict[tuple[str, int], Partition] = {}
        # The subscription's only topic (a fast path of `pack`); None for several.
        self._topic: str | None = None
        self.__epoch = 0
        # The partition of the last item handed out and the position before it: while
        # paused, the message Arroyo's processor holds.
        self.__last_handed_out: tuple[Partition, int] | None = None
        self.__rebalanced = False
        self.__closing = False

    @abstractmethod
    def pack(self, messages: Sequence[Any]) -> list[BrokerValue[TPayload] | Exception]:
        """The items one `consume()` result becomes, errors in their place. librdkafka's
        position has already moved past every message, so none may be left out."""

    # -- polling ----------------------------------------------------------------------------

    def poll(self, timeout: float | None = None) -> BrokerValue[TPayload] | None:
        if not self.__ready:
            self.__rebalanced = False
            self.__fetch(timeout)
            if self.__rebalanced:
                return None
        offsets: MutableMapping[Partition, int] = self.__inner.tell()  # type: ignore[assignment]
        while self.__ready:
            item = self.__ready.popleft()
            if isinstance(item, Exception):
                # In its place among the items: what came before it was handed out, what
                # came after it is handed out by the next polls.
                if isinstance(item, RecoverableError):
                    # Arroyo's processor swallows these silently; an operator wants to know.
                    logger.warning("consumer error, polling on", extra={"error": str(item)})
                raise item
            # A rebalance inside `consume()` may have taken the partition away.
            position = offsets.get(item.partition)
            if position is not None:
                self.__last_handed_out = (item.partition, position)
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
        rebalances = self.__inner.rebalances
        messages: list[Any] = confluent.consume(self.__max_fetch, 0)
        if not messages and timeout != 0:
            wait = self.__max_wait if timeout is None else min(timeout, self.__max_wait)
            messages = confluent.consume(1, wait)
            if messages and self.__max_fetch > 1:
                messages.extend(confluent.consume(self.__max_fetch - 1, 0))
        if self.__inner.rebalances != rebalances and not self.__closing:
            # librdkafka paused every partition for the callbacks and has resumed the kept
            # ones without waking their fetchers (`fetcher_wakeup.py`).
            wake_fetchers(confluent, self.__inner.tell())
        if messages:
            self.__ready.extend(self.pack(messages))

    def __drop_ready(self, partitions: Sequence[Partition] | Mapping[Partition, int]) -> None:
        if self.__ready:
            dropped = set(partitions)
            self.__ready = deque(
                item
                for item in self.__ready
                if isinstance(item, Exception) or item.partition not in dropped
            )

    # -- subscription and positions: Arroyo's consumer, minus the items they invalidate -----

    def subscribe(
        self,
        topics: Sequence[Topic],
        on_assign: Callable[[Mapping[Partition, int]], None] | None = None,
        on_revoke: Callable[[Sequence[Partition]], None] | None = None,
    ) -> None:
        def assigned(partitions: Mapping[Partition, int]) -> None:
            paused = self.__paused_for_rebalance()
            if on_assign is not None:
                on_assign(partitions)
            self.__after_rebalance(paused, revoked=())

        def revoked(partitions: Sequence[Partition]) -> None:
            self.__drop_ready(partitions)
            paused = self.__paused_for_rebalance() if partitions else False
            if on_revoke is not None:
                on_revoke(partitions)
            if partitions:
                self.__after_rebalance(paused, revoked=partitions)

        self._topic = topics[0].name if len(topics) == 1 else None
        self.__inner.subscribe(topics, on_assign=assigned, on_revoke=revoked)

    def __paused_for_rebalance(self) -> bool:
        # Arroyo's processor pauses every partition, and only when backpressure lasted.
        return not self.__closing and bool(self.__inner.paused())

    def __after_rebalance(self, paused: bool, revoked: Sequence[Partition]) -> None:
        """Arroyo's processor has just rebuilt its chain (it does on every change)."""
        self.__rebalanced = True
        if not paused:
            return
        kept = [partition for partition in self.__inner.tell() if partition not in revoked]
        held = self.__last_handed_out
        if held is not None and held[0] in kept:
            self.seek({held[0]: held[1]})
        resumed = [partition for partition in self.__inner.paused() if partition in kept]
        if resumed:
            self.__inner.resume(resumed)
        logger.info(
            "rebalanced while paused; reading the held message again and resuming",
            extra={
                "held": None
                if held is None
                else f"{held[0].topic.name}[{held[0].index}]@{held[1]}",
                "resumed": len(resumed),
            },
        )

    def unsubscribe(self) -> None:
        self.__ready.clear()
        self.__inner.unsubscribe()

    def tell(self) -> Mapping[Partition, int]:
        return self.__inner.tell()

    def seek(self, offsets: Mapping[Partition, int]) -> None:
        """Read these partitions again from these offsets; later items get a new `epoch`.

        librdkafka discards what it prefetched for a partition it seeks; items already
        handed out are the caller's to drop (see `MessageRun.epoch`).
        """
        self.__drop_ready(offsets)
        self.__inner.seek(offsets)
        self.__epoch += 1

    @property
    def epoch(self) -> int:
        """How many times `seek` was called: the `epoch` of the items fetched from now on."""
        return self.__epoch

    def group_metadata(self) -> object:
        """The group generation and member id, for `send_offsets_to_transaction` (KIP-447)."""
        metadata: object = self.__confluent.consumer_group_metadata()
        return metadata

    def pause(self, partitions: Sequence[Partition]) -> None:
        # Arroyo's pause seeks the partitions back to `tell()`, which is just past the last
        # item handed out: the dropped items are fetched again after `resume`.
        self.__drop_ready(partitions)
        self.__inner.pause(partitions)

    def resume(self, partitions: Sequence[Partition]) -> None:
        self.__inner.resume(partitions)
        if not self.__closing:
            wake_fetchers(self.__confluent, partitions)

    def paused(self) -> Sequence[Partition]:
        return self.__inner.paused()

    def stage_offsets(self, offsets: Mapping[Partition, int]) -> None:
        self.__inner.stage_offsets(offsets)

    def commit_offsets(self) -> Mapping[Partition, int] | None:
        return self.__commit_window.run("commit", self.__inner.commit_offsets)

    def close(self, timeout: float | None = None) -> None:
        self.__closing = True
        self.__ready.clear()
        self.__inner.close(timeout)

    @property
    def closed(self) -> bool:
        return self.__inner.closed

    @property
    def member_id(self) -> str:
        return self.__inner.member_id


class FetchingKafkaConsumer(FetchingConsumer[KafkaPayload]):
    """Hands out one message per `poll`, exactly what Arroyo's `KafkaConsumer` returns, from
    fetches of up to `max_fetch_messages`."""

    def __init__(
        self,
        configuration: Mapping[str, Any],
        max_fetch_messages: int = DEFAULT_MAX_FETCH_SINGLE_MESSAGES,
        max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
        commit_window: RetryWindow | None = None,
    ) -> None:
        super().__init__(configuration, max_fetch_messages, max_wait_seconds, commit_window)

    def pack(self, messages: Sequence[Any]) -> list[BrokerValue[KafkaPayload] | Exception]:
        items: list[BrokerValue[KafkaPayload] | Exception] = []
        partitions = self._partitions
        for message in messages:
            error = message.error()
            if error is not None:
                items.append(consumer_error(error, message))
                continue
            key = (message.topic(), message.partition())
            partition = partitions.get(key)
            if partition is None:
                partition = partitions[key] = Partition(Topic(key[0]), key[1])
            headers = message.headers()
            items.append(
                BrokerValue(
                    KafkaPayload(message.key(), message.value() or b"", headers if headers else []),
                    partition,
                    message.offset(),
                    datetime.utcfromtimestamp(message.timestamp()[1] / 1000.0),
                )
            )
        return items

"""A stand-in for librdkafka's consumer inside Arroyo's `KafkaConsumer` (and ours), for
unit tests of what Arroyo's processor does around rebalances: partitions with numbered
messages, positions that `seek` and `pause` move, and rebalances the test schedules, fired
at the start of the next `consume()` as librdkafka serves them inside its polls."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from arroyo.backends.kafka import build_kafka_consumer_configuration
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from workers.common.fetching_consumer import FetchingConsumer

Callback = Callable[[Any, list[TopicPartition]], None]
FetchingConsumerT = TypeVar("FetchingConsumerT", bound=FetchingConsumer[Any])


class StubMessage:
    def __init__(
        self, topic: str, partition: int, offset: int, error: KafkaError | None = None
    ) -> None:
        self.__topic = topic
        self.__partition = partition
        self.__offset = offset
        self.__error = error

    def error(self) -> KafkaError | None:
        return self.__error

    def headers(self) -> list[tuple[str, bytes]]:
        return []

    def key(self) -> bytes:
        return b"key"

    def value(self) -> bytes:
        return b"%d" % self.__offset

    def topic(self) -> str:
        return self.__topic

    def partition(self) -> int:
        return self.__partition

    def offset(self) -> int:
        return self.__offset

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000 + self.__offset)


class StubConfluent:
    """`messages[p]` messages in each partition `p`; the first `consume()` assigns
    `initial`. `schedule_assign` / `schedule_revoke` queue a rebalance for the next
    `consume()`; `close()` revokes what is left, in `close_steps` steps if given, after
    handing over `close_assigns` first if given (partitions librdkafka assigned while the
    application was not polling). `committed()` inside `close()` fails: librdkafka, closing,
    never answers it."""

    def __init__(self, topic: str, messages: dict[int, int], initial: list[int]) -> None:
        self.topic = topic
        self.__messages = messages
        self.__pending: list[tuple[str, list[int]]] = [("assign", initial)]
        self.__on_assign: Callback | None = None
        self.__on_revoke: Callback | None = None
        self.position: dict[int, int] = {}
        self.paused: set[int] = set()
        self.committed_offsets: dict[int, int] = {}
        self.commits: list[list[tuple[int, int]]] = []
        self.close_steps: list[list[int]] | None = None
        self.close_assigns: list[int] = []
        self.before_close: Callable[[], None] = lambda: None
        #: The partitions of each `offsets_for_times` call (the fetcher wake-ups).
        self.offset_requests: list[list[int]] = []
        self.__closing = False

    # -- what the test drives --------------------------------------------------------------

    def schedule_assign(self, partitions: list[int]) -> None:
        self.__pending.append(("assign", partitions))

    def schedule_revoke(self, partitions: list[int]) -> None:
        self.__pending.append(("revoke", partitions))

    def __tps(self, partitions: list[int]) -> list[TopicPartition]:
        return [TopicPartition(self.topic, partition) for partition in partitions]

    # -- librdkafka's consumer, as far as Arroyo's KafkaConsumer uses it --------------------

    def subscribe(self, topics: list[str], on_assign: Callback, on_revoke: Callback) -> None:
        self.__on_assign, self.__on_revoke = on_assign, on_revoke

    def committed(self, partitions: list[TopicPartition], timeout: float = 0) -> list[Any]:
        if self.__closing:
            raise AssertionError("committed() inside close(): librdkafka never answers it")
        return [
            TopicPartition(p.topic, p.partition, self.committed_offsets.get(p.partition, 0))
            for p in partitions
        ]

    def assign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.position[tp.partition] = tp.offset

    incremental_assign = assign

    def seek(self, partition: TopicPartition) -> None:
        self.position[partition.partition] = partition.offset

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.update(tp.partition for tp in partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.difference_update(tp.partition for tp in partitions)

    def memberid(self) -> str:
        return "member"

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout: float
    ) -> list[TopicPartition]:
        self.offset_requests.append(sorted(tp.partition for tp in partitions))
        return [
            TopicPartition(tp.topic, tp.partition, self.__messages[tp.partition])
            for tp in partitions
        ]

    def consume(self, count: int, timeout: float) -> list[StubMessage]:
        while self.__pending:
            kind, partitions = self.__pending.pop(0)
            if kind == "assign":
                assert self.__on_assign is not None
                self.__on_assign(self, self.__tps(partitions))
            else:
                assert self.__on_revoke is not None
                self.__on_revoke(self, self.__tps(partitions))
                for partition in partitions:
                    self.position.pop(partition, None)
                    self.paused.discard(partition)
        taken: list[StubMessage] = []
        for partition in sorted(self.position):
            if partition in self.paused:
                continue
            while len(taken) < count and self.position[partition] < self.__messages[partition]:
                taken.append(StubMessage(self.topic, partition, self.position[partition]))
                self.position[partition] += 1
        return taken

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        if self.__closing:
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_MEMBER_ID))
        self.commits.append([(tp.partition, tp.offset) for tp in offsets])
        for tp in offsets:
            self.committed_offsets[tp.partition] = tp.offset
        return offsets

    def close(self) -> None:
        self.__closing = True
        self.before_close()
        assert self.__on_assign is not None
        assert self.__on_revoke is not None
        if self.close_assigns:
            self.__on_assign(self, self.__tps(self.close_assigns))
            # confluent-kafka assigns by itself when the callback did not.
            for partition in self.close_assigns:
                self.position.setdefault(partition, 0)
        for step in self.close_steps or [sorted(self.position)]:
            self.__on_revoke(self, self.__tps(step))


def configuration() -> dict[str, Any]:
    # A fresh dict each time: Arroyo's consumer edits the one it gets.
    return {
        **build_kafka_consumer_configuration(
            {"bootstrap.servers": "127.0.0.1:9"}, group_id="unit", auto_offset_reset="earliest"
        ),
        "arroyo.enable.auto.commit": False,
    }


def with_stub(consumer: FetchingConsumerT, stub: StubConfluent) -> FetchingConsumerT:
    """`consumer` with `stub` in place of librdkafka's consumer (in Arroyo's and in ours)."""
    gate = consumer._FetchingConsumer__inner._KafkaConsumer__consumer  # type: ignore[attr-defined]
    gate.wrapped.close()
    gate.wrapped = stub
    consumer._FetchingConsumer__confluent = stub  # type: ignore[attr-defined]
    return consumer

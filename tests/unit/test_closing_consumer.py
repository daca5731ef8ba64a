"""A consumer that closes in steps (consumer group protocol) must not get a strategy chain
rebuilt inside `close()`: the rebuilt chain's join commits as a member that is leaving, and
that error replaced the one that stopped the worker (docs/rebalancing.md, Closing)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import pytest
from arroyo.backends.kafka import KafkaPayload, build_kafka_consumer_configuration
from arroyo.backends.kafka.consumer import InvalidState
from arroyo.commit import CommitPolicy
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies import CommitOffsets, ProcessingStrategy
from arroyo.processing.strategies.abstract import ProcessingStrategyFactory
from arroyo.types import Commit, Message, Partition, Topic
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from workers.common.closing_consumer import ClosingKafkaConsumer
from workers.common.fetching_consumer import FetchingConsumer, FetchingKafkaConsumer
from workers.common.message_runs import RunConsumer

TOPIC = "closing"
FetchingConsumerT = TypeVar("FetchingConsumerT", bound=FetchingConsumer[Any])
Revoke = Callable[[Any, list[TopicPartition]], None]


class StubMessage:
    def __init__(self, partition: int, offset: int) -> None:
        self.__partition = partition
        self.__offset = offset

    def error(self) -> None:
        return None

    def headers(self) -> list[tuple[str, bytes]]:
        return []

    def key(self) -> bytes:
        return b"key"

    def value(self) -> bytes:
        return b"%d" % self.__offset

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self.__partition

    def offset(self) -> int:
        return self.__offset

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)


class SteppedCloseConfluent:
    """Stands in for librdkafka's consumer inside Arroyo's `KafkaConsumer`. The first poll
    assigns partitions 0 and 1; later polls hand out messages of partition 0. `close()`
    revokes partition 1 and then partition 0, as librdkafka does for a member that closes
    while the broker moves one of its partitions; from then on a commit is refused, as the
    broker refuses a member that is leaving."""

    def __init__(self, messages: int) -> None:
        self.__messages = [StubMessage(0, offset) for offset in range(messages)]
        self.__on_assign: Revoke | None = None
        self.__on_revoke: Revoke | None = None
        self.__closing = False
        self.commits: list[list[tuple[int, int]]] = []
        self.tells_while_closing: list[object] = []
        self.owner: FetchingConsumer[Any] | None = None

    def subscribe(self, topics: list[str], on_assign: Revoke, on_revoke: Revoke) -> None:
        self.__on_assign, self.__on_revoke = on_assign, on_revoke

    def committed(self, partitions: list[TopicPartition], timeout: float = 0) -> list[Any]:
        return [TopicPartition(p.topic, p.partition, 0) for p in partitions]

    def assign(self, partitions: list[TopicPartition]) -> None:
        pass

    def resume(self, partitions: list[TopicPartition]) -> None:
        pass

    def memberid(self) -> str:
        return "member"

    def consume(self, count: int, timeout: float) -> list[StubMessage]:
        if self.__on_assign is not None:
            assign, self.__on_assign = self.__on_assign, None
            assign(self, [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)])
            return []
        taken, self.__messages = self.__messages[:count], self.__messages[count:]
        return taken

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> list[TopicPartition]:
        if self.__closing:
            raise KafkaException(KafkaError(KafkaError.UNKNOWN_MEMBER_ID))
        self.commits.append([(o.partition, o.offset) for o in offsets])
        return offsets

    def close(self) -> None:
        self.__closing = True
        if self.owner is not None:
            try:
                self.tells_while_closing.append(dict(self.owner.tell()))
            except InvalidState as refused:
                self.tells_while_closing.append(refused)
        assert self.__on_revoke is not None
        self.__on_revoke(self, [TopicPartition(TOPIC, 1)])
        self.__on_revoke(self, [TopicPartition(TOPIC, 0)])


class Crash(Exception):
    pass


class CommitFirstCrashOnSecond(ProcessingStrategy[KafkaPayload]):
    """Hands the first message to `CommitOffsets`; raises `Crash` on the second."""

    def __init__(self, next_step: ProcessingStrategy[KafkaPayload]) -> None:
        self.__next_step = next_step
        self.__seen = 0

    def submit(self, message: Message[KafkaPayload]) -> None:
        self.__seen += 1
        if self.__seen > 1:
            raise Crash("the worker's own error")
        self.__next_step.submit(message)

    def poll(self) -> None:
        self.__next_step.poll()

    def join(self, timeout: float | None = None) -> None:
        self.__next_step.join(timeout)

    def close(self) -> None:
        self.__next_step.close()

    def terminate(self) -> None:
        self.__next_step.terminate()


class CountingFactory(ProcessingStrategyFactory[KafkaPayload]):
    def __init__(self) -> None:
        self.created: list[set[int]] = []

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        self.created.append({partition.index for partition in partitions})
        return CommitFirstCrashOnSecond(CommitOffsets(commit))


def configuration() -> dict[str, Any]:
    # A fresh dict each time: Arroyo's consumer edits the one it gets.
    return {
        **build_kafka_consumer_configuration(
            {"bootstrap.servers": "127.0.0.1:9"}, group_id="unit", auto_offset_reset="earliest"
        ),
        "arroyo.enable.auto.commit": False,
    }


def stepped(consumer: FetchingConsumerT, stub: SteppedCloseConfluent) -> FetchingConsumerT:
    # The stub stands in for librdkafka's consumer, in Arroyo's consumer and in ours.
    inner: ClosingKafkaConsumer = consumer._FetchingConsumer__inner  # type: ignore[attr-defined]
    inner._KafkaConsumer__consumer.close()  # type: ignore[attr-defined]
    inner._KafkaConsumer__consumer = stub  # type: ignore[attr-defined]
    consumer._FetchingConsumer__confluent = stub  # type: ignore[attr-defined]
    stub.owner = consumer
    return consumer


def stepped_consumer(stub: SteppedCloseConfluent) -> FetchingKafkaConsumer:
    return stepped(FetchingKafkaConsumer(configuration()), stub)


def processor(consumer: FetchingKafkaConsumer, factory: CountingFactory) -> StreamProcessor[Any]:
    return StreamProcessor(
        consumer,
        Topic(TOPIC),
        factory,
        # Only a forced commit (a join) commits: the first message's offset stays staged.
        commit_policy=CommitPolicy(min_commit_frequency_sec=3600.0, min_commit_messages=None),
    )


def test_a_worker_error_survives_a_close_in_steps_and_no_chain_is_rebuilt() -> None:
    stub = SteppedCloseConfluent(messages=2)
    factory = CountingFactory()
    with pytest.raises(Crash, match="the worker's own error"):
        processor(stepped_consumer(stub), factory).run()
    # One chain, for the assignment; none for partition 0 while partition 1 went.
    assert factory.created == [{0, 1}]
    assert stub.commits == []


def test_a_graceful_shutdown_closing_in_steps_rebuilds_no_chain() -> None:
    stub = SteppedCloseConfluent(messages=1)
    factory = CountingFactory()
    worker = processor(stepped_consumer(stub), factory)
    for _ in range(2):  # the assignment and the one message, then an empty poll
        worker._run_once()
    worker.signal_shutdown()
    worker.run()
    assert factory.created == [{0, 1}]
    # The join before the consumer closed committed the staged offset.
    assert stub.commits == [[(0, 1)]]


@pytest.mark.parametrize("consumer_class", [FetchingKafkaConsumer, RunConsumer])
def test_tell_is_refused_from_the_moment_close_begins(
    consumer_class: Callable[[dict[str, Any]], FetchingConsumer[Any]],
) -> None:
    stub = SteppedCloseConfluent(messages=0)
    consumer = stepped(consumer_class(configuration()), stub)
    consumer.subscribe([Topic(TOPIC)])
    consumer.poll(0)
    assert set(consumer.tell()) == {Partition(Topic(TOPIC), 0), Partition(Topic(TOPIC), 1)}
    consumer.close()
    assert [type(told) for told in stub.tells_while_closing] == [InvalidState]
    with pytest.raises(InvalidState):
        consumer.tell()

"""A consumer that closes in steps (consumer group protocol) must not get a strategy chain
rebuilt inside `close()`: the rebuilt chain's join commits as a member that is leaving, and
that error replaced the one that stopped the worker (docs/rebalancing.md, Closing)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.kafka.consumer import InvalidState
from arroyo.commit import CommitPolicy
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies import CommitOffsets, ProcessingStrategy
from arroyo.processing.strategies.abstract import ProcessingStrategyFactory
from arroyo.types import Commit, Message, Partition, Topic

from tests.support.confluent_stub import StubConfluent, configuration, with_stub
from tests.support.gated_strategy import PassThrough
from workers.common.fetching_consumer import FetchingConsumer, FetchingKafkaConsumer
from workers.common.message_runs import RunConsumer

TOPIC = "closing"


class Crash(Exception):
    pass


class CommitFirstCrashOnSecond(PassThrough):
    """Hands the first message to `CommitOffsets`; raises `Crash` on the second."""

    def __init__(self, next_step: ProcessingStrategy[KafkaPayload]) -> None:
        super().__init__(next_step)
        self.__seen = 0

    def submit(self, message: Message[KafkaPayload]) -> None:
        self.__seen += 1
        if self.__seen > 1:
            raise Crash("the worker's own error")
        self.next_step.submit(message)


class CountingFactory(ProcessingStrategyFactory[KafkaPayload]):
    def __init__(self) -> None:
        self.created: list[set[int]] = []

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        self.created.append({partition.index for partition in partitions})
        return CommitFirstCrashOnSecond(CommitOffsets(commit))


def stepped_stub(messages: int) -> StubConfluent:
    """Partitions 0 and 1, `messages` in partition 0; `close()` revokes partition 1 and then
    partition 0, as librdkafka does for a member that closes while the broker moves one of
    its partitions; from then on a commit is refused, as from a member that is leaving."""
    stub = StubConfluent(TOPIC, {0: messages, 1: 0}, initial=[0, 1])
    stub.close_steps = [[1], [0]]
    return stub


def stepped_consumer(stub: StubConfluent) -> FetchingKafkaConsumer:
    return with_stub(FetchingKafkaConsumer(configuration()), stub)


def processor(consumer: FetchingKafkaConsumer, factory: CountingFactory) -> StreamProcessor[Any]:
    return StreamProcessor(
        consumer,
        Topic(TOPIC),
        factory,
        # Only a forced commit (a join) commits: the first message's offset stays staged.
        commit_policy=CommitPolicy(min_commit_frequency_sec=3600.0, min_commit_messages=None),
    )


def test_a_worker_error_survives_a_close_in_steps_and_no_chain_is_rebuilt() -> None:
    stub = stepped_stub(messages=2)
    factory = CountingFactory()
    with pytest.raises(Crash, match="the worker's own error"):
        processor(stepped_consumer(stub), factory).run()
    # One chain, for the assignment; none for partition 0 while partition 1 went.
    assert factory.created == [{0, 1}]
    assert stub.commits == []


def test_a_graceful_shutdown_closing_in_steps_rebuilds_no_chain() -> None:
    stub = stepped_stub(messages=1)
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
    stub = stepped_stub(messages=0)
    consumer = with_stub(consumer_class(configuration()), stub)
    told: list[object] = []

    def tell() -> None:
        try:
            told.append(dict(consumer.tell()))
        except InvalidState as refused:
            told.append(refused)

    stub.before_close = tell
    consumer.subscribe([Topic(TOPIC)])
    consumer.poll(0)
    assert set(consumer.tell()) == {Partition(Topic(TOPIC), 0), Partition(Topic(TOPIC), 1)}
    consumer.close()
    assert [type(answer) for answer in told] == [InvalidState]
    with pytest.raises(InvalidState):
        consumer.tell()


@pytest.mark.parametrize("consumer_class", [FetchingKafkaConsumer, RunConsumer])
def test_partitions_assigned_inside_close_are_not_read_and_close_returns(
    consumer_class: Callable[[dict[str, Any]], FetchingConsumer[Any]],
) -> None:
    # Arroyo's assignment callback reads committed offsets, which librdkafka never answers
    # once closing: close() hung for good.
    stub = StubConfluent(TOPIC, {0: 0, 1: 0, 2: 0}, initial=[0])
    stub.close_assigns = [1, 2]
    consumer = with_stub(consumer_class(configuration()), stub)
    assigned: list[set[int]] = []
    revoked: list[set[int]] = []
    consumer.subscribe(
        [Topic(TOPIC)],
        on_assign=lambda partitions: assigned.append({p.index for p in partitions}),
        on_revoke=lambda partitions: revoked.append({p.index for p in partitions}),
    )
    consumer.poll(0)
    consumer.close()
    assert consumer.closed
    # Arroyo saw neither the late assignment nor its revocation, only its own partition go.
    assert assigned == [{0}]
    assert revoked == [{0}]


def test_a_graceful_shutdown_with_partitions_assigned_inside_close_ends() -> None:
    stub = StubConfluent(TOPIC, {0: 1, 1: 0}, initial=[0])
    stub.close_assigns = [1]
    factory = CountingFactory()
    worker = processor(stepped_consumer(stub), factory)
    for _ in range(2):
        worker._run_once()
    worker.signal_shutdown()
    worker.run()
    assert factory.created == [{0}]
    assert stub.commits == [[(0, 1)]]

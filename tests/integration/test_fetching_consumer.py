"""The fetching consumers against the real local Kafka: `RunConsumer` (runs per partition) and
`FetchingKafkaConsumer` (single messages); pause, rebalance, commits."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from arroyo.backends.kafka import KafkaPayload
from arroyo.types import BrokerValue, Partition, Topic

from harness.kafka import make_topics, unique_name
from harness.waiting import wait_for
from tests.support.kafka import produce
from workers.common.fetching_consumer import FetchingConsumer, FetchingKafkaConsumer
from workers.common.kafka_config import ConsumerOptions, consumer_configuration
from workers.common.kafka_offsets import committed_offsets
from workers.common.message_runs import MessageRun, RunConsumer
from workers.common.settings import Settings

pytestmark = pytest.mark.integration

MESSAGES = 2_000


CONSUMERS: dict[str, Callable[..., FetchingConsumer[Any]]] = {
    "runs": RunConsumer,
    "messages": FetchingKafkaConsumer,
}


@pytest.fixture(params=sorted(CONSUMERS))
def kind(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def build(settings: Settings, group: str, kind: str, max_fetch: int = 500) -> FetchingConsumer[Any]:
    return CONSUMERS[kind](
        consumer_configuration(settings, ConsumerOptions(group_id=group)),
        max_fetch_messages=max_fetch,
    )


class Assignment:
    def __init__(self) -> None:
        self.partitions: set[Partition] = set()
        self.revoked: list[Partition] = []

    def assigned(self, offsets: Mapping[Partition, int]) -> None:
        self.partitions.update(offsets)

    def revoke(self, partitions: Sequence[Partition]) -> None:
        self.partitions.difference_update(partitions)
        self.revoked.extend(partitions)


def values_of(item: BrokerValue[Any]) -> list[tuple[int, int]]:
    """(partition, offset) of every message of a run, checked against the run's own; or of
    the one message handed out."""
    if isinstance(item.payload, KafkaPayload):
        return [(item.partition.index, item.offset)]
    assert isinstance(item.payload, MessageRun)
    positions = []
    for raw in item.payload.messages:
        offset = raw.offset()
        assert offset is not None
        positions.append((item.partition.index, offset))
    assert positions[-1][1] == item.offset
    return positions


def drain(
    consumer: FetchingConsumer[Any],
    seen: list[tuple[int, int]],
    until: int,
    timeout: float = 60.0,
) -> list[BrokerValue[Any]]:
    runs: list[BrokerValue[Any]] = []

    def more() -> bool:
        run = consumer.poll(0.2)
        if run is not None:
            runs.append(run)
            seen.extend(values_of(run))
        return len(seen) >= until

    wait_for(more, timeout=timeout, interval=0.0, what=f"{until} messages consumed")
    return runs


@pytest.fixture
def topic(settings: Settings) -> str:
    name = unique_name("runs")
    make_topics(settings, name, partitions=3)
    produce(settings, name, ((str(i).encode(), str(i).encode()) for i in range(MESSAGES)))
    return name


def test_every_message_is_handed_out_once_in_partition_order_and_committed(
    settings: Settings, topic: str, kind: str
) -> None:
    group = unique_name("runs-group")
    consumer = build(settings, group, kind)
    consumer.subscribe([Topic(topic)])
    seen: list[tuple[int, int]] = []
    runs = drain(consumer, seen, MESSAGES)
    assert len(seen) == len(set(seen)) == MESSAGES
    if kind == "runs":
        assert len(runs) < MESSAGES // 10  # consumed in runs, not one by one
    else:
        assert len(runs) == MESSAGES
        assert all(run.payload.value == run.payload.key for run in runs)
    for partition in {p for p, _ in seen}:
        offsets = [o for p, o in seen if p == partition]
        assert offsets == list(range(len(offsets)))
    positions = consumer.tell()
    for run in runs:
        assert positions[run.partition] >= run.next_offset
    consumer.stage_offsets(dict(positions))
    consumer.commit_offsets()
    consumer.close()
    committed = committed_offsets(settings, group, topic)
    assert sum(committed.values()) == MESSAGES


def test_pause_drops_fetched_items_and_resume_fetches_them_again(
    settings: Settings, topic: str, kind: str
) -> None:
    consumer = build(settings, unique_name("runs-pause"), kind, max_fetch=300)
    assignment = Assignment()
    consumer.subscribe([Topic(topic)], on_assign=assignment.assigned)
    seen: list[tuple[int, int]] = []
    drain(consumer, seen, 1)
    # Items of the other partitions may be fetched and waiting: pausing everything drops them.
    paused = list(consumer.tell())
    consumer.pause(paused)
    assert sorted(consumer.paused(), key=lambda p: p.index) == sorted(paused, key=lambda p: p.index)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert consumer.poll(0.05) is None, "a paused consumer handed something out"
    consumer.resume(paused)
    drain(consumer, seen, MESSAGES)
    assert len(seen) == len(set(seen)) == MESSAGES
    consumer.close()


def test_a_rebalance_hands_every_message_to_exactly_one_member(
    settings: Settings, topic: str, kind: str
) -> None:
    group = unique_name("runs-rebalance")
    first = build(settings, group, kind, max_fetch=100)
    second = build(settings, group, kind, max_fetch=100)
    first_assignment, second_assignment = Assignment(), Assignment()
    first.subscribe(
        [Topic(topic)], on_assign=first_assignment.assigned, on_revoke=first_assignment.revoke
    )
    seen: dict[str, list[tuple[int, int]]] = {"first": [], "second": []}
    drain(first, seen["first"], 300)
    # Commit what `first` has handed out, so the new owner of a moved partition starts there.
    first.stage_offsets(dict(first.tell()))
    first.commit_offsets()
    handed_out = len(seen["first"])
    second.subscribe(
        [Topic(topic)], on_assign=second_assignment.assigned, on_revoke=second_assignment.revoke
    )

    members = (("first", first), ("second", second))

    def take(name: str, consumer: FetchingConsumer[Any], timeout: float) -> bool:
        run = consumer.poll(timeout)
        if run is None:
            return False
        seen[name].extend(values_of(run))
        # Commit as we go: a partition moving later starts where its owner stopped.
        consumer.stage_offsets({run.partition: run.next_offset})
        consumer.commit_offsets()
        return True

    def take_and_commit() -> None:
        # Wait for a fetch only when neither member has anything queued: a member whose
        # partitions are drained would otherwise add its wait to every item the other hands
        # out (one message per poll: hundreds of waits, beyond the deadline on a busy machine).
        took = [take(name, consumer, 0) for name, consumer in members]  # every member, each time
        if not any(took):
            for name, consumer in members:
                take(name, consumer, 0.02)

    def both_assigned() -> bool:
        take_and_commit()
        return bool(second_assignment.partitions) and not (
            first_assignment.partitions & second_assignment.partitions
        )

    wait_for(both_assigned, timeout=60, interval=0.0, what="a rebalance between the two members")
    assert first_assignment.revoked
    total: list[Any] = []

    def everything() -> bool:
        take_and_commit()
        total[:] = seen["first"] + seen["second"]
        return len(set(total)) >= MESSAGES

    wait_for(everything, timeout=60, interval=0.0, what="every message consumed")
    assert handed_out > 0
    # Every message was consumed; nothing a member handed out after the move is a duplicate
    # of what the other member handed out (items of revoked partitions were dropped).
    assert len(total) == len(set(total)) == MESSAGES
    first.close()
    second.close()

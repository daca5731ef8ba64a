"""Fetchers are woken after a rebalance and after a resume (docs/rebalancing.md, Kept
partitions): librdkafka resumes a partition without waking the thread that fetches it, which
then slept up to a second while the partitions a member kept had nothing to hand out."""

from __future__ import annotations

from typing import Any

import pytest
from arroyo.types import Partition, Topic
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from tests.support.confluent_stub import StubConfluent, configuration, with_stub
from workers.common.fetcher_wakeup import WAKE_TIMEOUT_SECONDS, wake_fetchers
from workers.common.fetching_consumer import FetchingKafkaConsumer

TOPIC = "kept"
MESSAGES = {0: 3, 1: 3, 2: 3}


def member(stub: StubConfluent) -> FetchingKafkaConsumer:
    consumer = with_stub(FetchingKafkaConsumer(configuration(), max_fetch_messages=10), stub)
    consumer.subscribe([Topic(TOPIC)])
    return consumer


def settled_member(initial: list[int]) -> tuple[StubConfluent, FetchingKafkaConsumer]:
    """A member that has its assignment and has handed out every message; no request yet."""
    stub = StubConfluent(TOPIC, MESSAGES, initial=initial)
    consumer = member(stub)
    consumer.poll(0)  # the assignment: a poll that rebalanced hands out nothing
    while consumer.poll(0) is not None:
        pass
    stub.offset_requests.clear()
    return stub, consumer


def test_after_a_revocation_the_kept_partitions_fetchers_are_woken() -> None:
    stub, consumer = settled_member([0, 1, 2])
    stub.schedule_revoke([2])
    consumer.poll(0)
    assert stub.offset_requests == [[0, 1]]


def test_an_empty_assignment_arroyo_skips_still_wakes_the_fetchers() -> None:
    # librdkafka follows a revocation with an assignment of nothing, pausing and resuming
    # every partition for it; Arroyo's callback returns at once for it.
    stub, consumer = settled_member([0, 1])
    stub.schedule_assign([])
    consumer.poll(0)
    assert stub.offset_requests == [[0, 1]]


def test_polls_without_a_rebalance_send_no_request() -> None:
    stub, consumer = settled_member([0, 1])
    consumer.poll(0)
    consumer.poll(0)
    assert stub.offset_requests == []


def test_a_resume_wakes_the_fetchers_of_the_resumed_partitions() -> None:
    stub = StubConfluent(TOPIC, MESSAGES, initial=[0, 1, 2])
    consumer = member(stub)
    consumer.poll(0)
    partitions = [Partition(Topic(TOPIC), 0), Partition(Topic(TOPIC), 2)]
    consumer.pause(partitions)
    stub.offset_requests.clear()
    consumer.resume(partitions)
    assert stub.paused == set()
    assert stub.offset_requests == [[0, 2]]


def test_closing_sends_no_request() -> None:
    stub = StubConfluent(TOPIC, MESSAGES, initial=[0, 1])
    consumer = member(stub)
    consumer.poll(0)
    stub.offset_requests.clear()
    consumer.close()
    assert stub.offset_requests == []


class Unanswered:
    def __init__(self, error: int = KafkaError._TIMED_OUT) -> None:
        self.error = error
        self.calls: list[tuple[list[tuple[str, int, int]], float]] = []

    def offsets_for_times(self, partitions: list[TopicPartition], timeout: float) -> Any:
        self.calls.append(([(tp.topic, tp.partition, tp.offset) for tp in partitions], timeout))
        raise KafkaException(KafkaError(self.error))


@pytest.mark.parametrize(
    "error", [KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN]
)
def test_an_unanswered_wake_up_is_not_an_error_and_asks_for_the_latest_offsets(
    error: int,
) -> None:
    confluent = Unanswered(error)
    wake_fetchers(confluent, [Partition(Topic(TOPIC), 1)])
    assert confluent.calls == [([(TOPIC, 1, -1)], WAKE_TIMEOUT_SECONDS)]


def test_no_partitions_no_request() -> None:
    confluent = Unanswered()
    wake_fetchers(confluent, [])
    assert confluent.calls == []

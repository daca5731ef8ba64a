"""`runs_of`: how one `consume()` result becomes runs, with errors kept in their place."""

from __future__ import annotations

from typing import Any

import pytest
from arroyo.backends.kafka import build_kafka_consumer_configuration
from arroyo.errors import ConsumerError, TransportError
from arroyo.types import BrokerValue, Partition, Topic
from confluent_kafka import KafkaError
from hypothesis import given
from hypothesis import strategies as st

from tests.support.confluent_stub import StubMessage
from workers.common.message_runs import (
    DEFAULT_MAX_FETCH_MESSAGES,
    MessageRun,
    RunConsumer,
    runs_of,
)


def fake_message(
    partition: int, offset: int, error: KafkaError | None = None, topic: str = "t"
) -> StubMessage:
    return StubMessage(topic, partition, offset, error)


def _offsets(item: BrokerValue[MessageRun] | Exception) -> tuple[int, list[int | None]] | str:
    if isinstance(item, Exception):
        return type(item).__name__
    return (item.partition.index, [message.offset() for message in item.payload.messages])


# `topic="t"`: the fast path of a consumer subscribed to one topic (grouped by partition).
ONE_TOPIC_OR_ANY = pytest.mark.parametrize("topic", [None, "t"], ids=["any-topic", "one-topic"])


@ONE_TOPIC_OR_ANY
def test_one_run_per_partition_in_fetch_order(topic: str | None) -> None:
    fetched = [fake_message(0, 5), fake_message(1, 9), fake_message(0, 6), fake_message(1, 10)]
    items = runs_of(fetched, {}, topic=topic)
    assert [_offsets(item) for item in items] == [(0, [5, 6]), (1, [9, 10])]
    first = items[0]
    assert isinstance(first, BrokerValue)
    assert first.offset == 6
    assert first.partition == Partition(Topic("t"), 0)


@ONE_TOPIC_OR_ANY
def test_messages_after_an_error_are_kept_behind_it(topic: str | None) -> None:
    # librdkafka has moved past all of them: dropping those after the error loses them.
    fetched: list[Any] = [
        fake_message(3, 14),
        fake_message(0, 2),
        fake_message(3, 15, error=KafkaError(KafkaError._TRANSPORT)),
        fake_message(3, 16),
        fake_message(0, 3),
        fake_message(3, 17),
        fake_message(3, 18, error=KafkaError(KafkaError.UNKNOWN)),
    ]
    items = runs_of(fetched, {}, topic=topic)
    assert [_offsets(item) for item in items] == [
        (3, [14]),
        (0, [2]),
        "TransportError",
        (3, [16, 17]),
        (0, [3]),
        "ConsumerError",
    ]
    assert isinstance(items[2], TransportError)
    assert isinstance(items[5], ConsumerError)


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.booleans()).map(
            lambda pair: (pair[0], KafkaError(KafkaError._TRANSPORT) if pair[1] else None)
        ),
        max_size=40,
    )
)
def test_one_topic_path_gives_the_same_runs_as_the_general_one(
    fetch: list[tuple[int, KafkaError | None]],
) -> None:
    fetched = [fake_message(index, offset, error) for offset, (index, error) in enumerate(fetch)]
    general = runs_of(fetched, {})
    one_topic = runs_of(fetched, {}, topic="t")
    assert [_offsets(item) for item in one_topic] == [_offsets(item) for item in general]
    assert [item.partition for item in one_topic if isinstance(item, BrokerValue)] == [
        item.partition for item in general if isinstance(item, BrokerValue)
    ]


def test_partitions_are_interned() -> None:
    partitions: dict[tuple[str, int], Partition] = {}
    first = runs_of([fake_message(2, 1)], partitions)[0]
    second = runs_of([fake_message(2, 2)], partitions)[0]
    assert isinstance(first, BrokerValue)
    assert isinstance(second, BrokerValue)
    assert first.partition is second.partition


def test_a_run_is_never_empty() -> None:
    with pytest.raises(ValueError, match="at least one message"):
        MessageRun([])


# Nothing listens on port 9: creating the consumer connects to nothing before `subscribe`.
def configuration() -> dict[str, Any]:
    # A fresh dict each time: Arroyo's consumer edits the one it gets.
    return {
        **build_kafka_consumer_configuration(
            {"bootstrap.servers": "127.0.0.1:9"}, group_id="unit", auto_offset_reset="earliest"
        ),
        "arroyo.enable.auto.commit": False,
    }


class FakeConfluent:
    """Records `consume()` calls; returns what it is given, in order."""

    def __init__(self, answers: list[list[Any]]) -> None:
        self.answers = answers
        self.calls: list[tuple[int, float]] = []

    def consume(self, count: int, timeout: float) -> list[Any]:
        self.calls.append((count, timeout))
        return self.answers.pop(0) if self.answers else []


def _run_consumer(fake: FakeConfluent, **options: Any) -> RunConsumer:
    # The fake stands in for librdkafka's consumer.
    consumer = RunConsumer(configuration(), **options)
    consumer._FetchingConsumer__confluent = fake  # type: ignore[attr-defined]
    return consumer


@pytest.mark.parametrize(("asked", "waited"), [(1.0, 0.05), (None, 0.05), (0.01, 0.01)])
def test_poll_never_waits_longer_than_max_wait(asked: float | None, waited: float) -> None:
    fake = FakeConfluent([])
    consumer = _run_consumer(fake)
    try:
        assert consumer.poll(asked) is None
    finally:
        consumer.close()
    assert fake.calls == [(DEFAULT_MAX_FETCH_MESSAGES, 0), (1, waited)]


def test_poll_with_zero_timeout_does_not_wait() -> None:
    fake = FakeConfluent([])
    consumer = _run_consumer(fake, max_wait_seconds=0.2)
    try:
        assert consumer.poll(0) is None
    finally:
        consumer.close()
    assert fake.calls == [(DEFAULT_MAX_FETCH_MESSAGES, 0)]


def test_max_wait_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_wait_seconds"):
        RunConsumer(configuration(), max_wait_seconds=0)

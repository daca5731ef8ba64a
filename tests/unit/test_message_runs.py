"""`runs_of`: how one `consume()` result becomes runs, with errors kept in their place."""

from __future__ import annotations

from typing import Any

import pytest
from arroyo.errors import ConsumerError, TransportError
from arroyo.types import BrokerValue, Partition, Topic
from confluent_kafka import KafkaError

from workers.common.message_runs import MessageRun, runs_of


class FakeMessage:
    def __init__(
        self, partition: int, offset: int, error: KafkaError | None = None, topic: str = "t"
    ) -> None:
        self.__partition = partition
        self.__offset = offset
        self.__error = error
        self.__topic = topic

    def error(self) -> KafkaError | None:
        return self.__error

    def topic(self) -> str:
        return self.__topic

    def partition(self) -> int:
        return self.__partition

    def offset(self) -> int:
        return self.__offset

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000 + self.__offset)

    def value(self) -> bytes:
        return b"%d" % self.__offset


def _offsets(item: BrokerValue[MessageRun] | Exception) -> tuple[int, list[int | None]] | str:
    if isinstance(item, Exception):
        return type(item).__name__
    return (item.partition.index, [message.offset() for message in item.payload.messages])


def test_one_run_per_partition_in_fetch_order() -> None:
    fetched = [FakeMessage(0, 5), FakeMessage(1, 9), FakeMessage(0, 6), FakeMessage(1, 10)]
    items = runs_of(fetched, {})
    assert [_offsets(item) for item in items] == [(0, [5, 6]), (1, [9, 10])]
    first = items[0]
    assert isinstance(first, BrokerValue)
    assert first.offset == 6
    assert first.partition == Partition(Topic("t"), 0)


def test_messages_after_an_error_are_kept_behind_it() -> None:
    # librdkafka has moved past all of them: dropping those after the error loses them.
    fetched: list[Any] = [
        FakeMessage(3, 14),
        FakeMessage(0, 2),
        FakeMessage(3, 15, error=KafkaError(KafkaError._TRANSPORT)),
        FakeMessage(3, 16),
        FakeMessage(0, 3),
        FakeMessage(3, 17),
        FakeMessage(3, 18, error=KafkaError(KafkaError.UNKNOWN)),
    ]
    items = runs_of(fetched, {})
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


def test_partitions_are_interned() -> None:
    partitions: dict[tuple[str, int], Partition] = {}
    first = runs_of([FakeMessage(2, 1)], partitions)[0]
    second = runs_of([FakeMessage(2, 2)], partitions)[0]
    assert isinstance(first, BrokerValue)
    assert isinstance(second, BrokerValue)
    assert first.partition is second.partition


def test_a_run_is_never_empty() -> None:
    with pytest.raises(ValueError, match="at least one message"):
        MessageRun([])

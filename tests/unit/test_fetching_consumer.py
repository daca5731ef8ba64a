"""`FetchingKafkaConsumer.pack`: one fetched message becomes exactly what Arroyo's own
`KafkaConsumer.poll` returns for it, errors in their place."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from arroyo.backends.kafka import KafkaPayload, build_kafka_consumer_configuration
from arroyo.errors import EndOfPartition, OffsetOutOfRange, TransportError
from arroyo.types import BrokerValue, Partition, Topic
from confluent_kafka import KafkaError

from workers.common.fetching_consumer import FetchingKafkaConsumer


class FakeMessage:
    def __init__(
        self,
        partition: int,
        offset: int,
        value: bytes | None = b"v",
        headers: list[tuple[str, bytes]] | None = None,
        error: KafkaError | None = None,
    ) -> None:
        self.__partition, self.__offset, self.__value = partition, offset, value
        self.__headers, self.__error = headers, error

    def error(self) -> KafkaError | None:
        return self.__error

    def topic(self) -> str:
        return "chunks"

    def partition(self) -> int:
        return self.__partition

    def offset(self) -> int:
        return self.__offset

    def key(self) -> bytes:
        return b"k%d" % self.__offset

    def value(self) -> bytes | None:
        return self.__value

    def headers(self) -> list[tuple[str, bytes]] | None:
        return self.__headers

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000 + self.__offset)


@pytest.fixture
def consumer() -> Any:
    configuration = build_kafka_consumer_configuration(
        {},
        group_id="fetching-test",
        auto_offset_reset="earliest",
        bootstrap_servers=["127.0.0.1:9"],
    )
    consumer = FetchingKafkaConsumer(configuration)
    yield consumer
    consumer.close()


def test_each_message_becomes_the_broker_value_arroyo_would_return(consumer: Any) -> None:
    headers = [("sentry-organization-id", b"7")]
    items = consumer.pack([FakeMessage(2, 10, b"data", headers), FakeMessage(0, 3, None, None)])
    chunks = Partition(Topic("chunks"), 2)
    assert items == [
        BrokerValue(
            KafkaPayload(b"k10", b"data", headers),
            chunks,
            10,
            datetime.utcfromtimestamp(1_700_000_000.010),
        ),
        BrokerValue(
            KafkaPayload(b"k3", b"", []),
            Partition(Topic("chunks"), 0),
            3,
            datetime.utcfromtimestamp(1_700_000_000.003),
        ),
    ]
    # Partitions are made once per consumer, not per message.
    assert consumer.pack([FakeMessage(2, 11)])[0].partition is items[0].partition


@pytest.mark.parametrize(
    ("code", "raised"),
    [
        (KafkaError._PARTITION_EOF, EndOfPartition),
        (KafkaError._TRANSPORT, TransportError),
        (KafkaError.OFFSET_OUT_OF_RANGE, OffsetOutOfRange),
    ],
)
def test_an_error_event_keeps_its_place_among_the_messages(
    consumer: Any, code: int, raised: type[Exception]
) -> None:
    items = consumer.pack(
        [FakeMessage(0, 1), FakeMessage(0, 2, error=KafkaError(code)), FakeMessage(1, 5)]
    )
    assert [type(item) for item in items] == [BrokerValue, raised, BrokerValue]
    assert [items[0].offset, items[2].offset] == [1, 5]


def test_poll_hands_out_one_fetched_message_at_a_time(consumer: Any) -> None:
    fetched = [[FakeMessage(0, 1), FakeMessage(0, 2), FakeMessage(1, 7)]]
    calls: list[tuple[int, float]] = []

    def consume(count: int, timeout: float) -> list[Any]:
        calls.append((count, timeout))
        return fetched.pop(0) if fetched else []

    consumer._FetchingConsumer__confluent = type("Fake", (), {"consume": staticmethod(consume)})
    offsets = consumer.tell()
    # As after an assignment: positions only for assigned partitions are moved.
    offsets[Partition(Topic("chunks"), 0)] = 0
    offsets[Partition(Topic("chunks"), 1)] = 0
    handed = [consumer.poll(0) for _ in range(3)]
    assert [(item.partition.index, item.offset) for item in handed] == [(0, 1), (0, 2), (1, 7)]
    assert len(calls) == 1
    assert consumer.tell() == {Partition(Topic("chunks"), 0): 3, Partition(Topic("chunks"), 1): 8}

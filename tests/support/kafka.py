"""Real-Kafka helpers for integration tests: unique topics, producing, reading back."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import (
    Consumer,
    Message,
    Producer,
    TopicPartition,
)

from harness.kafka import unique_name
from harness.waiting import wait_for
from workers.common.kafka_offsets import committed_offsets, committed_records, fully_committed
from workers.common.settings import Settings


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


def _as_bytes(value: str | bytes | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


def produce(settings: Settings, topic: str, values: Iterable[tuple[bytes | None, bytes]]) -> int:
    producer = Producer({**settings.kafka_client_config(), "linger.ms": 5, "acks": "all"})
    failures: list[str] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    count = 0
    for key, value in values:
        producer.produce(topic, value=value, key=key, on_delivery=delivered)
        producer.poll(0)
        count += 1
    assert producer.flush(30) == 0, "messages left undelivered"
    assert failures == [], failures
    return count


def _record(message: Message) -> Record:
    partition, offset = message.partition(), message.offset()
    assert partition is not None
    assert offset is not None
    headers = message.headers() or []
    return Record(
        partition=partition,
        offset=offset,
        key=_as_bytes(message.key()),
        value=_as_bytes(message.value()) or b"",
        headers={
            name: _as_bytes(value) or b""
            for name, value in (headers.items() if isinstance(headers, dict) else headers)
        },
    )


def read_all(settings: Settings, topic: str, expected: int, timeout: float = 60.0) -> list[Record]:
    """Every committed record of `topic` from the beginning, once at least `expected` are there."""
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": unique_name("reader"),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = sorted(metadata.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, index, 0) for index in partitions])
        records: list[Record] = []
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=1000, timeout=0.2):
                if message.error() is not None:
                    continue
                records.append(_record(message))
        return records
    finally:
        consumer.close()


def read_available(settings: Settings, topic: str, timeout: float = 30.0) -> list[Record]:
    """Every committed record of `topic` as of now (`kafka_offsets.committed_records`)."""
    return [_record(message) for message in committed_records(settings, topic, timeout=timeout)]


def wait_until_committed(
    settings: Settings, group: str, topic: str, timeout: float = 60.0
) -> dict[int, int]:
    """Wait until `group` committed every message of `topic`; its committed offsets.

    An empty partition has nothing to commit and never gets a commit: it counts as done
    (comparing committed offsets with high watermarks would wait for it forever).
    """
    wait_for(
        lambda: fully_committed(settings, group, topic),
        timeout,
        f"group {group} to commit all of {topic}",
        interval=0.2,
    )
    return committed_offsets(settings, group, topic)

"""Read-only views of topic and consumer-group progress (high watermarks, committed offsets)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from workers.common.settings import Settings

OFFSETS_TIMEOUT_SECONDS = 10.0
# A fresh broker elects partition leaders and creates `__consumer_offsets` lazily: for a few
# seconds offset requests fail with these codes, then succeed.
TRANSIENT_ERRORS = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TIMED_OUT,
        KafkaError._WAIT_COORD,
        # Offsets of a transaction not yet committed or aborted (exactly-once billing).
        KafkaError.UNSTABLE_OFFSET_COMMIT,
    }
)
RETRY_DEADLINE_SECONDS = 60.0
RETRY_PAUSE_SECONDS = 0.2

T = TypeVar("T")


def _retrying(read: Callable[[], T]) -> T:
    deadline = time.monotonic() + RETRY_DEADLINE_SECONDS
    while True:
        try:
            return read()
        except KafkaException as error:
            code = error.args[0].code() if error.args else None
            if code not in TRANSIENT_ERRORS or time.monotonic() > deadline:
                raise
        time.sleep(RETRY_PAUSE_SECONDS)


def _inspector(settings: Settings, group_id: str) -> Consumer:
    # A consumer that never subscribes: it reads metadata and offsets without joining the group.
    return Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": group_id,
            "enable.auto.commit": False,
        }
    )


def _partitions(consumer: Consumer, topic: str) -> list[TopicPartition]:
    metadata = consumer.list_topics(topic, timeout=OFFSETS_TIMEOUT_SECONDS)
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        return []
    return [TopicPartition(topic, index) for index in sorted(found.partitions)]


def watermarks(settings: Settings, topic: str) -> dict[int, tuple[int, int]]:
    """(low, high) watermark per partition; a partition is empty when low == high."""
    return _retrying(lambda: _watermarks(settings, topic))


def _watermarks(settings: Settings, topic: str) -> dict[int, tuple[int, int]]:
    consumer = _inspector(settings, "workers-offsets-inspector")
    try:
        marks: dict[int, tuple[int, int]] = {}
        for partition in _partitions(consumer, topic):
            low, high = consumer.get_watermark_offsets(partition, timeout=OFFSETS_TIMEOUT_SECONDS)
            marks[partition.partition] = (low, high)
        return marks
    finally:
        consumer.close()


def high_watermarks(settings: Settings, topic: str) -> dict[int, int]:
    return {partition: high for partition, (_, high) in watermarks(settings, topic).items()}


def committed_offsets(settings: Settings, group_id: str, topic: str) -> dict[int, int]:
    """Committed offset per partition; partitions without a commit are absent."""
    return _retrying(lambda: _committed_offsets(settings, group_id, topic))


def _committed_offsets(settings: Settings, group_id: str, topic: str) -> dict[int, int]:
    consumer = _inspector(settings, group_id)
    try:
        partitions = _partitions(consumer, topic)
        if not partitions:
            return {}
        committed = consumer.committed(partitions, timeout=OFFSETS_TIMEOUT_SECONDS)
        return {tp.partition: tp.offset for tp in committed if tp.offset >= 0}
    finally:
        consumer.close()


def total(offsets: Mapping[int, int]) -> int:
    return sum(offsets.values())


def uncommitted(settings: Settings, group_id: str, topic: str) -> dict[int, int]:
    """Messages per partition past the group's committed offset.

    A partition the group never committed counts from its low watermark (where the group
    would start reading), so an empty partition, which nobody ever needs to commit, counts 0.
    """
    marks = watermarks(settings, topic)
    committed = committed_offsets(settings, group_id, topic)
    return {
        partition: max(high - committed.get(partition, low), 0)
        for partition, (low, high) in marks.items()
    }


def lag(settings: Settings, group_id: str, topic: str) -> int:
    """Messages not yet committed by the group, over every partition of `topic`."""
    return total(uncommitted(settings, group_id, topic))


def fully_committed(settings: Settings, group_id: str, topic: str) -> bool:
    """True when the group has committed every message of `topic` (empty partitions need none)."""
    return lag(settings, group_id, topic) == 0


def committed_records(
    settings: Settings,
    topic: str,
    since: Mapping[int, int] | None = None,
    timeout: float = 30.0,
) -> list[Message]:
    """Every record of `topic` after `since` (offset per partition; the start where absent),
    read with `read_committed` to the end of each partition as of now.

    The end is librdkafka's end-of-partition event (the high watermark, or the start of a
    transaction still open), not the high watermark itself: in a topic written in
    transactions, commit markers take offsets too and aborted records are never read.
    """
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": "workers-offsets-inspector",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    try:
        partitions = _partitions(consumer, topic)
        if not partitions:
            return []
        for partition in partitions:
            partition.offset = (since or {}).get(partition.partition, OFFSET_BEGINNING)
        consumer.assign(partitions)
        ended: set[int] = set()
        records: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(ended) < len(partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: read {len(ended)} of {len(partitions)} partitions")
            for message in consumer.consume(num_messages=1000, timeout=0.2):
                error, index = message.error(), message.partition()
                if error is None:
                    records.append(message)
                    ended.discard(index or 0)
                elif error.code() == KafkaError._PARTITION_EOF and index is not None:
                    ended.add(index)
        return records
    finally:
        consumer.close()


def count_committed_records(
    settings: Settings,
    topic: str,
    since: Mapping[int, int],
    timeout: float = 30.0,
    matching: Callable[[Message], bool] | None = None,
) -> int:
    """How many `committed_records` (only those `matching`, when given)."""
    records = committed_records(settings, topic, since, timeout)
    if matching is None:
        return len(records)
    return sum(1 for record in records if matching(record))

"""Read-only views of topic and consumer-group progress (high watermarks, committed offsets)."""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka import Consumer, TopicPartition

from workers.common.settings import Settings

OFFSETS_TIMEOUT_SECONDS = 10.0


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


def high_watermarks(settings: Settings, topic: str) -> dict[int, int]:
    consumer = _inspector(settings, "workers-offsets-inspector")
    try:
        marks: dict[int, int] = {}
        for partition in _partitions(consumer, topic):
            _, high = consumer.get_watermark_offsets(partition, timeout=OFFSETS_TIMEOUT_SECONDS)
            marks[partition.partition] = high
        return marks
    finally:
        consumer.close()


def committed_offsets(settings: Settings, group_id: str, topic: str) -> dict[int, int]:
    """Committed offset per partition; partitions without a commit are absent."""
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


def lag(settings: Settings, group_id: str, topic: str) -> int:
    """Messages not yet committed by the group (from offset 0 where nothing is committed)."""
    marks = high_watermarks(settings, topic)
    committed = committed_offsets(settings, group_id, topic)
    return sum(high - committed.get(partition, 0) for partition, high in marks.items())

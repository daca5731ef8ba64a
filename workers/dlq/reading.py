"""Reading a DLQ topic to its end, as of the start of the read.

Read with `isolation.level=read_committed`: billing writes its DLQ copies in Kafka
transactions, and a copy of an aborted transaction was never dead-lettered
(docs/billing.md, Processing guarantees). The reader assigns partitions itself and never
joins or commits for a group.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from workers.common.kafka_config import MAX_MESSAGE_BYTES
from workers.common.settings import Settings
from workers.dlq.letters import DeadLetter

READER_GROUP = "workers-dlq-reader"
METADATA_TIMEOUT_SECONDS = 10.0
# The read fails when no partition makes progress for this long.
STALL_TIMEOUT_SECONDS = 60.0


class TopicNotFound(LookupError):
    def __init__(self, topic: str) -> None:
        super().__init__(topic)
        self.topic = topic

    def __str__(self) -> str:
        return f"topic {self.topic!r} does not exist"


def reader_configuration(settings: Settings) -> dict[str, Any]:
    return {
        **settings.kafka_client_config(),
        "group.id": READER_GROUP,
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "isolation.level": "read_committed",
        "max.partition.fetch.bytes": MAX_MESSAGE_BYTES,
        "fetch.max.bytes": MAX_MESSAGE_BYTES * 4,
        "queued.max.messages.kbytes": 65_536,
    }


def _start_offsets(
    consumer: Consumer, topic: str, partitions: list[int], since_ms: int | None
) -> dict[int, int]:
    if since_ms is None or not partitions:
        return dict.fromkeys(partitions, OFFSET_BEGINNING)
    found = consumer.offsets_for_times(
        [TopicPartition(topic, index, since_ms) for index in partitions],
        timeout=METADATA_TIMEOUT_SECONDS,
    )
    # -1: no message at or after `since_ms` in that partition.
    return {tp.partition: tp.offset for tp in found if tp.offset >= 0}


def read_dead_letters(
    settings: Settings, topic: str, since_ms: int | None = None
) -> Iterator[DeadLetter]:
    """Every committed message of `topic` up to its end as of now, partition by partition in
    offset order (partitions interleaved); from the first message at or after `since_ms`."""
    consumer = Consumer(reader_configuration(settings))
    try:
        metadata = consumer.list_topics(topic, timeout=METADATA_TIMEOUT_SECONDS)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            raise TopicNotFound(topic)
        partitions = sorted(described.partitions)
        ends: dict[int, int] = {}
        for index in partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, index), timeout=METADATA_TIMEOUT_SECONDS
            )
            if high > low:
                ends[index] = high
        starts = _start_offsets(consumer, topic, sorted(ends), since_ms)
        pending = {index for index in ends if index in starts}
        if not pending:
            return
        consumer.assign([TopicPartition(topic, index, starts[index]) for index in pending])
        yield from _until_ends(consumer, pending, ends)
    finally:
        consumer.close()


def _until_ends(
    consumer: Consumer, pending: set[int], ends: dict[int, int]
) -> Iterator[DeadLetter]:
    last_progress = time.monotonic()
    while pending:
        messages = consumer.consume(num_messages=500, timeout=0.2)
        if messages:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > STALL_TIMEOUT_SECONDS:
            raise TimeoutError(f"no progress reading {len(pending)} DLQ partitions")
        for message in messages:
            error, index, offset = message.error(), message.partition(), message.offset()
            if index is None or index not in pending:
                continue
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(index)
                    continue
                raise RuntimeError(f"reading the DLQ failed: {error}")
            if offset is not None and offset >= ends[index]:
                pending.discard(index)  # written after the read began
                continue
            yield DeadLetter.from_message(message)
            if offset is not None and offset >= ends[index] - 1:
                pending.discard(index)

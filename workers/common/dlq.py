"""Dead-letter queue: invalid messages go to the worker's DLQ topic with their reason.

Arroyo's `KafkaDlqProducer` drops the `reason` of an `InvalidMessage`; this producer keeps
it in a `reason` header (plus the original topic, partition and offset), counts every DLQ
message by reason code, and the policy bounds Arroyo's raw-message buffer so a long stretch
of uncommitted messages cannot grow memory without limit.

A reason is `"<code>"` or `"<code>: <detail>"`, where the code is a short fixed identifier
such as `invalid_json`; only the code becomes a metric label.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from arroyo.backends.abstract import Producer, ProducerFuture
from arroyo.backends.kafka import KafkaPayload
from arroyo.dlq import (
    DlqLimit,
    DlqLimitState,
    DlqPolicy,
    DlqProducer,
    InvalidMessage,
    KafkaDlqProducer,
)
from arroyo.types import BrokerValue, Partition, Topic

from workers.common.metrics import FleetMetrics

logger = logging.getLogger(__name__)

DEFAULT_MAX_BUFFERED_MESSAGES_PER_PARTITION = 10_000
MAX_REASON_HEADER_BYTES = 1024


def reason_code(reason: str | None) -> str:
    if not reason:
        return "unspecified"
    return reason.split(":", 1)[0].strip() or "unspecified"


def dlq_headers(
    headers: Sequence[tuple[str, bytes]],
    partition: Partition,
    offset: int,
    reason: str,
    worker: str,
) -> list[tuple[str, bytes]]:
    """The headers of a DLQ copy: the original ones plus where it came from and why."""
    return [
        *headers,
        ("original_topic", partition.topic.name.encode()),
        ("original_partition", str(partition.index).encode()),
        ("original_offset", str(offset).encode()),
        ("reason", reason.encode()[:MAX_REASON_HEADER_BYTES]),
        ("worker", worker.encode()),
    ]


def dlq_origin(headers: Sequence[tuple[str, bytes]]) -> tuple[str, int, int] | None:
    """(topic, partition, offset) of the message a DLQ copy was made of (`dlq_headers`)."""
    found = dict(headers)  # the last of a repeated name: ours, after the original headers
    try:
        return (
            found["original_topic"].decode(),
            int(found["original_partition"]),
            int(found["original_offset"]),
        )
    except (KeyError, ValueError):
        return None


#: The headers `dlq_headers` appends to the original ones, in this order
#: (docs/reference.md, DLQ messages).
DLQ_HEADER_NAMES = ("original_topic", "original_partition", "original_offset", "reason", "worker")


class InvalidPayload(InvalidMessage):
    """An `InvalidMessage` that carries the message's payload, for a chain that dead-letters
    without Arroyo's buffer of raw messages (`workers/common/run_dead_letters.py`)."""

    def __init__(
        self, payload: KafkaPayload, partition: Partition, offset: int, reason: str
    ) -> None:
        super().__init__(partition, offset, reason=reason, log_exception=False)
        self.payload = payload


def note_dead_letter(
    metrics: FleetMetrics, dlq_topic: str, partition: Partition, offset: int, reason: str
) -> None:
    """Count and log one message on its way to the DLQ (never its bytes)."""
    metrics.dlq_message(reason_code(reason))
    logger.warning(
        "message sent to DLQ",
        extra={
            "dlq_topic": dlq_topic,
            "partition": partition.index,
            "offset": offset,
            "reason": reason[:MAX_REASON_HEADER_BYTES],
        },
    )


def log_skipped_dead_letter(partition: Partition, offset: int | None, reason: str | None) -> None:
    """No DLQ topic: an invalid message is skipped, logged by position and reason code (never
    its bytes)."""
    logger.warning(
        "invalid message skipped (no DLQ topic)",
        extra={"partition": partition.index, "offset": offset, "reason": reason_code(reason)},
    )


class ReasonRecordingDlqProducer(DlqProducer[KafkaPayload]):
    def __init__(
        self, producer: Producer[KafkaPayload], topic: Topic, worker: str, metrics: FleetMetrics
    ) -> None:
        self.__producer = producer
        self.__topic = topic
        self.__worker = worker
        self.__metrics = metrics

    def produce(
        self, value: BrokerValue[KafkaPayload], reason: str | None = None
    ) -> ProducerFuture[BrokerValue[KafkaPayload]]:
        text = reason or "unspecified"
        headers = dlq_headers(
            value.payload.headers, value.partition, value.offset, text, self.__worker
        )
        note_dead_letter(self.__metrics, self.__topic.name, value.partition, value.offset, text)
        payload = KafkaPayload(value.payload.key, value.payload.value, headers)
        return self.__producer.produce(self.__topic, payload)

    @classmethod
    def build_initial_state(
        cls, limit: DlqLimit | None, assignment: Mapping[Partition, int]
    ) -> DlqLimitState:
        return KafkaDlqProducer.build_initial_state(limit, assignment)


def build_dlq_policy(
    producer: Producer[KafkaPayload],
    topic: str,
    worker: str,
    metrics: FleetMetrics,
    max_buffered_messages_per_partition: int = DEFAULT_MAX_BUFFERED_MESSAGES_PER_PARTITION,
) -> DlqPolicy[KafkaPayload]:
    return DlqPolicy(
        ReasonRecordingDlqProducer(producer, Topic(topic), worker, metrics),
        limit=None,
        max_buffered_messages_per_partition=max_buffered_messages_per_partition,
    )

"""The ceiling: one plain confluent-kafka producer sending the same chunks, as the gateway would.

The producer is the gateway's own (`workers.gateway.services.gateway_producer` with the
default `GatewayConfig`, as `workers serve gateway` builds it without options), so its
settings cannot drift from the gateway's: `acks=all`, idempotence, `linger.ms=2`, no
compression, 16 MiB messages. Each message is what the gateway produces for that chunk:
the value as sent (raw, or the gzip bytes), the sha1 as key and the chunk-upload headers.
No HTTP, no multipart parsing, no decompression or hashing: one Python thread calls
`produce` for every chunk (waiting on `BufferError` while librdkafka's queue is full), then
`flush`. The clock runs from the first `produce` to the last acknowledgement; the producer
has connected and fetched the topic's metadata before (the gateway's has too: it starts
before its clock).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from confluent_kafka import KafkaError, Message

from bench.gateway.shapes import TimedRun, Workload
from bench.gateway.upload import PARTITIONS, delete_topic
from harness.kafka import make_topics, unique_name
from workers.common.chunk_uploads import encode_headers
from workers.common.kafka_offsets import high_watermarks, total
from workers.common.settings import Settings
from workers.gateway.services import GatewayConfig, gateway_producer

#: The organization id in the headers: any id, nothing reads the topic.
ORGANIZATION_ID: Final = 1
QUEUE_FULL_POLL_SECONDS: Final = 0.005
FLUSH_SECONDS: Final = 120.0


@dataclass(frozen=True)
class CeilingResult(TimedRun):
    #: Bytes of values produced (the chunks as sent: about half of the chunks' for gzip).
    value_bytes: int
    watermark_growth: int

    @property
    def kafka_mb_per_second(self) -> float:
        """Value bytes (as stored in Kafka) per second."""
        return self.value_bytes / self.seconds / 1e6


def run(settings: Settings, work: Workload) -> CeilingResult:
    shape = work.shape
    topic = unique_name("bench-gateway-ceiling")
    make_topics(settings, topic, partitions=PARTITIONS)
    before = total(high_watermarks(settings, topic))
    producer = gateway_producer(settings, GatewayConfig(topic=topic))
    producer.list_topics(topic, timeout=30)  # connected, metadata known: as a started gateway
    failures: list[KafkaError] = []
    acknowledged = 0

    def delivered(error: KafkaError | None, _message: Message) -> None:
        nonlocal acknowledged
        if error is None:
            acknowledged += 1
        else:
            failures.append(error)

    started = time.perf_counter()
    uploaded_at = int(time.time() * 1000)
    for request in work.requests:
        for chunk in request:
            headers: list[tuple[str, str | bytes | None]] = list(
                encode_headers(ORGANIZATION_ID, chunk.checksum, chunk.encoding, uploaded_at)
            )
            while True:
                try:
                    producer.produce(
                        topic,
                        value=chunk.value,
                        key=chunk.checksum.encode(),
                        headers=headers,
                        on_delivery=delivered,
                    )
                    break
                except BufferError:
                    producer.poll(QUEUE_FULL_POLL_SECONDS)
            producer.poll(0)
    remaining = producer.flush(FLUSH_SECONDS)
    seconds = time.perf_counter() - started
    growth = total(high_watermarks(settings, topic)) - before
    if remaining or failures or acknowledged != shape.chunks or growth != shape.chunks:
        raise RuntimeError(
            f"ceiling sent {shape.chunks} chunks: {acknowledged} acknowledged, {remaining} "
            f"unsent, {len(failures)} failed ({failures[:1]}), topic grew by {growth}"
        )
    delete_topic(settings, topic)
    return CeilingResult(shape, seconds, work.value_bytes, growth)

"""Producing one message with confluent-kafka when its local queue may be full."""

from __future__ import annotations

from typing import Any

from confluent_kafka import Producer

QUEUE_FULL_WAIT_SECONDS = 0.1


def produce_waiting(producer: Producer, topic: str, **message: Any) -> None:
    """`producer.produce(topic, **message)`, serving delivery reports while the queue is full
    instead of failing with `BufferError`."""
    while True:
        try:
            producer.produce(topic, **message)
            break
        except BufferError:
            producer.poll(QUEUE_FULL_WAIT_SECONDS)
    producer.poll(0)

"""The plain confluent-kafka loops, the ceilings: `plain_decode` and `plain_billing`."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import msgspec
from confluent_kafka import Consumer, KafkaError
from confluent_kafka import Producer as ConfluentProducer

from bench.billing.workload import Workload, billable_outcome
from harness.kafka import unique_name
from workers.billing.definition import build_outcomes_producer
from workers.billing.message import BucketError, WireBucket, parse_bucket
from workers.billing.outcome import OutcomeEncoder
from workers.common.kafka_config import ConsumerOptions, consumer_configuration
from workers.common.settings import Settings


def _plain_consumer(settings: Settings, group: str) -> Consumer:
    """A confluent-kafka consumer with the fleet's librdkafka tuning (minus Arroyo's keys).

    The tuning matters for a ceiling: with librdkafka's default `fetch.queue.backoff.ms`
    (1 s) a loop that drains its prefetch queue (64 MiB) waits a second for the next fetch.
    """
    fleet = consumer_configuration(settings, ConsumerOptions(group_id=group))
    config = {
        key: value
        for key, value in fleet.items()
        if not key.startswith("arroyo.") and key != "stats_cb"
    }
    config["statistics.interval.ms"] = 0
    return Consumer(config)


def plain_decode(work: Workload) -> float:
    consumer = _plain_consumer(work.settings, unique_name("bench-plain"))
    consumer.subscribe([work.topic])
    seen = 0
    started: float | None = None
    decode = msgspec.json.Decoder(WireBucket).decode
    while seen < work.messages:
        for message in consumer.consume(1000, 1.0):
            if message.error() is not None:
                continue
            if started is None:
                started = time.perf_counter()
            with contextlib.suppress(msgspec.MsgspecError):
                decode(message.value() or b"")
            seen += 1
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    return seen / elapsed


def plain_billing(work: Workload, outcomes_topic: str) -> float:
    consumer = _plain_consumer(work.settings, unique_name("bench-plain-billing"))
    consumer.subscribe([work.topic])
    producer: ConfluentProducer = build_outcomes_producer(work.settings)
    encoder = OutcomeEncoder()
    failures: list[KafkaError] = []

    def delivered(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            failures.append(error)

    seen = 0
    started: float | None = None
    while seen < work.messages:
        batch: list[dict[str, Any]] = []
        for message in consumer.consume(1000, 1.0):
            if message.error() is not None:
                continue
            if started is None:
                started = time.perf_counter()
            seen += 1
            try:
                outcome = billable_outcome(parse_bucket(message.value() or b""))
            except BucketError:
                continue
            if outcome is not None:
                batch.append({"value": encoder.encode(*outcome)})
        if batch:
            queued = producer.produce_batch(outcomes_topic, batch, on_delivery=delivered)
            assert queued == len(batch), "producer queue full"
        producer.poll(0)
    assert producer.flush(60) == 0
    elapsed = time.perf_counter() - (started or time.perf_counter())
    consumer.close()
    assert not failures, failures[:3]
    return seen / elapsed

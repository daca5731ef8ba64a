"""Reading an outcomes topic back: exactly the expected outcomes, in the exact shape."""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from typing import Any, Final

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from bench.billing.workload import PARTITIONS, Workload
from harness.kafka import unique_name

_OUTCOME_KEYS: Final = [
    "timestamp",
    "org_id",
    "project_id",
    "key_id",
    "outcome",
    "reason",
    "event_id",
    "category",
    "quantity",
]


def verify_outcomes(
    work: Workload, topic: str, expected: Mapping[tuple[int, int, int, int], int]
) -> None:
    """Read `topic` to its end: exactly the expected outcomes, keyless, in the exact shape
    of docs/reference.md, Billing outcomes.

    Reads committed data only (`isolation.level=read_committed`: nothing of an aborted
    transaction) to the end of each partition as librdkafka reports it (its end-of-partition
    event), not to the high watermark: transaction markers take offsets too, so a partition
    written in transactions ends past its last record.
    """
    consumer = Consumer(
        {
            **work.settings.kafka_client_config(),
            "group.id": unique_name("bench-verify"),
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(topic, index, OFFSET_BEGINNING) for index in range(PARTITIONS)])
    ended: set[int] = set()
    seen: collections.Counter[Any] = collections.Counter()
    deadline = time.monotonic() + 60 + work.messages / 10_000
    try:
        while len(ended) < PARTITIONS:
            assert time.monotonic() < deadline, f"{topic}: only partitions {ended} read to the end"
            for message in consumer.consume(1000, 1.0):
                error = message.error()
                partition = message.partition()
                assert partition is not None
                if error is not None:
                    assert error.code() == KafkaError._PARTITION_EOF, error
                    ended.add(partition)
                    continue
                ended.discard(partition)
                assert message.key() is None, message.key()
                value = message.value() or b""
                outcome = orjson.loads(value)
                assert list(outcome) == _OUTCOME_KEYS, value
                assert b" " not in value, value
                assert outcome["outcome"] == 0, value
                seen[
                    (
                        outcome["org_id"],
                        outcome["project_id"],
                        outcome["category"],
                        outcome["quantity"],
                    )
                ] += 1
    finally:
        consumer.close()
    wanted = collections.Counter(expected)
    assert seen == wanted, (
        f"{topic}: {sum((seen - wanted).values())} unexpected outcomes, "
        f"{sum((wanted - seen).values())} missing"
    )

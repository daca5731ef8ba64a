"""Billing integration-test helpers: input buckets, the worker process, outcomes, a paced stream."""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from confluent_kafka import Producer
from sentry_kafka_schemas import get_codec

from tests.support.kafka import Record
from tests.support.worker_process import WorkerProcess
from workers.common.settings import Settings

PARTITIONS: Final = 4
CUSTOM_METRIC_ID: Final = 9223372036854776500
TIMESTAMP: Final = re.compile(rb'^\{"timestamp":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z",')
OUTCOMES_CODEC: Final = get_codec("outcomes")


@dataclass
class Topics:
    input: str
    outcomes: str

    def group(self, suffix: str = "") -> str:
        return f"{self.input}-group{suffix}"


def billing_worker(input_topic: str, outcomes_topic: str, group: str, *extra: str) -> WorkerProcess:
    return WorkerProcess(
        "billing",
        "--topic", input_topic, "--consumer-group", group, "--outcomes-topic", outcomes_topic,
        *extra,
        log_name=f"billing-{group}",
    )  # fmt: skip


def custom_bucket(org_id: int, project_id: int, mri: str = "c:custom/clicks@none") -> bytes:
    letter = random.choice("chdfr")
    return orjson.dumps(
        {
            "version": 2,
            "use_case_id": "custom",
            "org_id": org_id,
            "project_id": project_id,
            "metric_id": CUSTOM_METRIC_ID,
            "timestamp": 1704614940,
            "tags": {},
            "retention_days": 90,
            "mapping_meta": {"h": {"5": "environment"}, letter: {str(CUSTOM_METRIC_ID): mri}},
            "type": "c",
            "value": 3.0,
        }
    )


def decoded(records: Sequence[Record]) -> list[dict[str, Any]]:
    found = []
    for record in records:
        assert record.key is None
        OUTCOMES_CODEC.decode(record.value, validate=True)
        assert TIMESTAMP.match(record.value), record.value
        found.append(orjson.loads(record.value))
    return found


def metric_lines(worker: WorkerProcess, name: str) -> list[str]:
    text = worker.scrape_or_none() or ""
    return [line for line in text.splitlines() if line.startswith(name)]


def gauge(worker: WorkerProcess, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metric_lines(worker, name))


def counter(worker: WorkerProcess, name: str, fragment: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in metric_lines(worker, name) if fragment in line
    )


class PacedProducer(threading.Thread):
    """Produces `values` (keyless) in slices of 500 at `per_second`, each slice acknowledged.

    One producer for the whole stream, whose deliveries may wait out a broker restart
    (`flush_timeout`); `produced` counts the acknowledged messages.
    """

    def __init__(
        self,
        stack: Settings,
        topic: str,
        values: Sequence[bytes],
        per_second: int,
        flush_timeout: float = 120.0,
    ) -> None:
        super().__init__(name="paced-producer", daemon=True)
        self.__stack, self.__topic, self.__values = stack, topic, values
        self.__interval = 500 / per_second
        self.__flush_timeout = flush_timeout
        self.produced = 0
        self.failures: list[str] = []
        self.__stopped = threading.Event()

    def stop(self) -> None:
        """End the stream after the slice in flight (the rest is never produced)."""
        self.__stopped.set()

    def run(self) -> None:
        producer = Producer(
            {**self.__stack.kafka_client_config(), "linger.ms": 5, "acks": "all",
             "enable.idempotence": True, "message.timeout.ms": int(self.__flush_timeout * 1000)}
        )  # fmt: skip

        def delivered(error: object, _message: object) -> None:
            if error is not None:
                self.failures.append(str(error))

        next_slice = time.monotonic()
        for start in range(0, len(self.__values), 500):
            if self.__stopped.is_set():
                return
            piece = self.__values[start : start + 500]
            for value in piece:
                producer.produce(self.__topic, value=value, on_delivery=delivered)
            if producer.flush(self.__flush_timeout) != 0:
                self.failures.append("messages left undelivered")
                return
            self.produced += len(piece)
            # Pacing the input (a stream's rate), not waiting for anything.
            next_slice += self.__interval
            time.sleep(max(next_slice - time.monotonic(), 0.0))

"""Billing integration-test helpers: input buckets, the worker process, outcomes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from sentry_kafka_schemas import get_codec

from harness.worker_process import WorkerProcess
from tests.support.kafka import Record

PARTITIONS: Final = 4
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

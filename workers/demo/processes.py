"""The demo's worker processes: real `workers run` subprocesses, each in a consumer group of
its own that starts at the end of its input topic, so they process the demo's traffic only.

`DemoWorker` remembers where the run started (the group's offsets, the DLQ's and outputs'
high watermarks): what the summary counts is committed since then.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from workers.common.demo_hooks import DemoFeed, DemoHooks
from workers.common.dlq import dlq_origin
from workers.common.kafka_offsets import (
    committed_offsets,
    count_committed_records,
    high_watermarks,
    total,
)
from workers.common.net import free_port
from workers.common.registry import ConsumerDefinition
from workers.common.settings import Settings

STOP_TIMEOUT_SECONDS: Final = 60.0
COMMIT_RETRY_SECONDS: Final = 30.0
POLL_INTERVAL_SECONDS: Final = 0.25
# The demo's own consumer group of a worker: `demo-<the worker's group>`.
GROUP_PREFIX: Final = "demo-"


@dataclass
class DemoWorker:
    definition: ConsumerDefinition
    hooks: DemoHooks
    process: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path
    group: str
    # Where the group started: the input topic's high watermarks when the demo began.
    start_offsets: dict[int, int]
    dlq_before: dict[int, int]
    outputs_before: dict[str, dict[int, int]]
    produced: int = 0
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.definition.name

    def add(self, feed: DemoFeed) -> None:
        self.produced += feed.messages
        self.notes.extend(feed.notes)
        if feed.failure is not None:
            self.failures.append(feed.failure)

    def processed(self, settings: Settings) -> int:
        """Input messages the demo's group committed since the run started."""
        committed = committed_offsets(settings, self.group, self.definition.topic)
        return total(committed) - total(self.start_offsets)

    def dead_lettered(self, settings: Settings) -> int:
        """DLQ copies of the input this run's group consumed (the DLQ topic may be shared)."""
        topic = self.definition.dlq_topic
        if topic is None:
            return 0
        input_topic = self.definition.topic
        end = committed_offsets(settings, self.group, input_topic)

        def consumed_here(message: Message) -> bool:
            raw = message.headers() or []
            pairs = raw.items() if isinstance(raw, dict) else raw
            origin = dlq_origin([(k, v) for k, v in pairs if isinstance(v, bytes)])
            if origin is None or origin[0] != input_topic:
                return False
            _, partition, offset = origin
            return self.start_offsets.get(partition, 0) <= offset < end.get(partition, 0)

        # Read committed: a worker may write its DLQ copies in Kafka transactions.
        return count_committed_records(settings, topic, self.dlq_before, matching=consumed_here)

    def outputs(self, settings: Settings) -> dict[str, int]:
        return {
            topic: count_committed_records(settings, topic, before)
            for topic, before in self.outputs_before.items()
        }


def start_group_at_end(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """Commit `group`'s offsets at `topic`'s high watermarks (the group must have no members)."""
    offsets = high_watermarks(settings, topic)
    consumer = Consumer(
        {**settings.kafka_client_config(), "group.id": group, "enable.auto.commit": False}
    )
    deadline = time.monotonic() + COMMIT_RETRY_SECONDS
    try:
        while True:
            try:
                consumer.commit(
                    offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()],
                    asynchronous=False,
                )
                return offsets
            except KafkaException:
                # A fresh broker loads its group coordinator lazily.
                if time.monotonic() > deadline:
                    raise
                time.sleep(POLL_INTERVAL_SECONDS)
    finally:
        consumer.close()


def start_worker(
    definition: ConsumerDefinition, hooks: DemoHooks, settings: Settings, registry_loader: str
) -> DemoWorker:
    group = GROUP_PREFIX + definition.consumer_group
    start_offsets = start_group_at_end(settings, group, definition.topic)
    dlq_before = high_watermarks(settings, definition.dlq_topic) if definition.dlq_topic else {}
    outputs_before = {topic: high_watermarks(settings, topic) for topic in definition.output_topics}
    port = free_port()
    logs = settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"demo-{definition.name}.log"
    command = [
        sys.executable, "-m", "workers.registry_cli", registry_loader, "run", definition.name,
        "--consumer-group", group, "--metrics-port", str(port),
        "--healthcheck-file", str(settings.state_dir / f"{definition.name}.healthcheck"),
    ]  # fmt: skip
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "WORKERS_LOG_FORMAT": "json"},
        )
    return DemoWorker(
        definition=definition,
        hooks=hooks,
        process=process,
        metrics_port=port,
        log_path=log_path,
        group=group,
        start_offsets=start_offsets,
        dlq_before=dlq_before,
        outputs_before=outputs_before,
    )


def check_running(worker: DemoWorker) -> None:
    if worker.process.poll() is not None:
        raise RuntimeError(
            f"worker {worker.name} exited with {worker.process.returncode}; see {worker.log_path}"
        )


def stop(workers: list[DemoWorker]) -> None:
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()

"""The assemble chain on Arroyo's LocalBroker, with the file's stages faked: what is recorded,
cached, counted, dead-lettered and committed, and when."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from arroyo.backends.abstract import Consumer
from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.local.backend import LocalBroker
from arroyo.backends.local.storages.memory import MemoryMessageStorage
from arroyo.processing import StreamProcessor
from arroyo.types import Partition, Topic
from prometheus_client import CollectorRegistry

from tests.support.run_options import default_run_options
from workers.assemble.definition import ASSEMBLE_CONSUMER
from workers.assemble.file_assembly import FileAssembly
from workers.assemble.metrics import AssembleMetrics
from workers.assemble.outcomes import (
    INTERNAL_ERROR,
    AssembledBytes,
    DebugFileContents,
    FileContents,
    Refused,
)
from workers.assemble.strategy import AssembleStrategyFactory, RequestDecoder
from workers.assemble.tasks import AssembleTask, FinishedTask
from workers.common.assemble_requests import (
    AssembleRequest,
    AssembleState,
    encode_assemble_request,
)
from workers.common.dlq import build_dlq_policy
from workers.common.metrics import FleetMetrics
from workers.common.runner import build_processor
from workers.common.settings import Settings

INPUT = Topic("assemble-requests")
DLQ = Topic("assemble-requests-dlq")
ORG = 5
WORKER = "assemble"


def checksum(n: int) -> str:
    return f"{n:040x}"


def make_task(task_id: int, attempts: int = 1) -> AssembleTask:
    return AssembleTask(
        id=task_id, organization_id=ORG, project_id=9, kind="dif", checksum=checksum(task_id),
        name="lib.so", chunks=(checksum(100),), debug_id=None, projects=(), release=None,
        dist=None, attempts=attempts,
    )  # fmt: skip


def finished(task_id: int, state: AssembleState, detail: str | None = None) -> FinishedTask:
    return FinishedTask(task_id, ORG, 9, "dif", checksum(task_id), state, detail)


@dataclass
class Fakes:
    """The stages of one file, and PostgreSQL's and Redis's part, in memory."""

    tmp_path: Path
    tasks: dict[int, AssembleTask | FinishedTask] = field(default_factory=dict)
    refuse_reading: set[int] = field(default_factory=set)
    fail_recording: bool = False
    reads: list[int] = field(default_factory=list)
    recorded: list[tuple[int, str]] = field(default_factory=list)
    cached: list[tuple[str, str, str | None]] = field(default_factory=list)
    scratch_paths: list[Path] = field(default_factory=list)

    def claim(self, request: AssembleRequest) -> AssembleTask | FinishedTask | None:
        found = self.tasks.get(request.task_id)
        if found is None or found.checksum != request.checksum:
            return None
        if isinstance(found, AssembleTask):
            found = replace(found, attempts=found.attempts + 1)
            self.tasks[request.task_id] = found
        return found

    def read(self, task: AssembleTask) -> AssembledBytes | Refused:
        self.reads.append(task.id)
        if task.id in self.refuse_reading:
            return Refused("Reported checksum mismatch")
        path = self.tmp_path / f"scratch-{task.id}"
        path.write_bytes(b"file")
        self.scratch_paths.append(path)
        return AssembledBytes(4, (), path)

    def inspect(self, task: AssembleTask, assembled: AssembledBytes) -> FileContents | Refused:
        return DebugFileContents(())

    def ok(self, task: AssembleTask, assembled: AssembledBytes, contents: FileContents) -> int:
        if self.fail_recording:
            raise RuntimeError("database down")
        self.recorded.append((task.id, "ok"))
        self.tasks[task.id] = finished(task.id, "ok")
        return 1

    def error(self, task: AssembleTask, detail: str) -> None:
        self.recorded.append((task.id, f"error: {detail}"))
        self.tasks[task.id] = finished(task.id, "error", detail)

    def set(
        self,
        organization_id: int,
        kind: str,
        project_id: int | None,
        checksum: str,
        state: str,
        detail: str | None = None,
    ) -> None:
        self.cached.append((checksum, state, detail))


@dataclass
class Chain:
    broker: LocalBroker[KafkaPayload]
    consumer: Consumer[KafkaPayload]
    processor: StreamProcessor[KafkaPayload]
    registry: CollectorRegistry

    def run_until(self, done: Callable[[], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the chain did not get there in time"
            self.processor._run_once()

    def finish(self) -> None:
        """Shut down as on SIGTERM: in-flight work joined, offsets committed."""
        self.processor.signal_shutdown()
        self.processor.run()

    def committed(self) -> int:
        """The group's committed offset (read by a new member of the group)."""
        probe = self.broker.get_consumer(ASSEMBLE_CONSUMER.consumer_group)
        offsets = self.broker.subscribe(probe, [INPUT])  # type: ignore[arg-type]
        return dict(offsets or {}).get(Partition(INPUT, 0), 0)

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, {"worker": WORKER, **labels}) or 0.0


def make_chain(fakes: Fakes, values: list[bytes], max_attempts: int = 5) -> Chain:
    broker: LocalBroker[KafkaPayload] = LocalBroker(MemoryMessageStorage())
    broker.create_topic(INPUT, partitions=1)
    broker.create_topic(DLQ, partitions=1)
    producer = broker.get_producer()
    for value in values:
        producer.produce(INPUT, KafkaPayload(None, value, [])).result()
    registry = CollectorRegistry()
    metrics = FleetMetrics(registry, WORKER)
    assembly = FileAssembly(
        claim=fakes.claim,
        read=fakes.read,
        inspect=fakes.inspect,
        recorder=fakes,
        status=fakes,
        metrics=metrics,
        assemble_metrics=AssembleMetrics(registry, WORKER),
        max_attempts=max_attempts,
    )
    definition = replace(
        ASSEMBLE_CONSUMER,
        build_strategy_factory=lambda context: AssembleStrategyFactory(
            RequestDecoder(context.metrics), assembly
        ),
    )
    consumer = broker.get_consumer(definition.consumer_group)
    processor = build_processor(
        consumer,
        definition,
        replace(default_run_options(definition), commit_interval_ms=0),
        Settings.from_env({}),
        metrics,
        build_dlq_policy(broker.get_producer(), DLQ.name, WORKER, metrics),
    )
    return Chain(broker, consumer, processor, registry)


def request(task_id: int, claimed: str | None = None) -> bytes:
    return encode_assemble_request(task_id, ORG, claimed or checksum(task_id))


def test_each_request_ends_recorded_cached_and_committed(tmp_path: Path) -> None:
    fakes = Fakes(tmp_path)
    fakes.tasks = {1: make_task(1, attempts=0), 2: make_task(2, attempts=0)}
    fakes.tasks[3] = finished(3, "error", "earlier")
    fakes.refuse_reading = {2}
    values = [
        request(1),
        b"not json",
        request(2),
        request(4),  # no such task
        request(3),  # finished before
        request(1),  # finished by the first request
    ]
    chain = make_chain(fakes, values)
    chain.run_until(lambda: len(fakes.cached) == 6)
    chain.finish()
    assert chain.committed() == len(values)

    assert fakes.recorded == [(1, "ok"), (2, "error: Reported checksum mismatch")]
    assert fakes.reads == [1, 2]
    assert fakes.cached == [
        (checksum(1), "assembling", None),
        (checksum(1), "ok", None),
        (checksum(2), "assembling", None),
        (checksum(2), "error", "Reported checksum mismatch"),
        (checksum(3), "error", "earlier"),
        (checksum(1), "ok", None),
    ]
    assert all(not path.exists() for path in fakes.scratch_paths)
    assert chain.sample("workers_assemble_files_total", kind="dif", result="ok") == 1
    assert chain.sample("workers_assemble_files_total", kind="dif", result="error") == 1
    assert chain.sample("workers_assemble_skipped_total", state="error") == 1
    assert chain.sample("workers_assemble_skipped_total", state="ok") == 1
    reasons = []
    for offset in range(2):
        dead = chain.broker.consume(Partition(DLQ, 0), offset)
        assert dead is not None
        reasons.append(dict(dead.payload.headers)["reason"].decode().split(":")[0])
    assert reasons == ["invalid_request", "unknown_task"]
    assert chain.sample("workers_dlq_messages_total", reason="unknown_task") == 1


def test_nothing_is_committed_when_recording_fails_and_the_scratch_file_goes(
    tmp_path: Path,
) -> None:
    fakes = Fakes(tmp_path, fail_recording=True)
    fakes.tasks = {1: make_task(1, attempts=0)}
    chain = make_chain(fakes, [request(1)])
    with pytest.raises(RuntimeError, match="database down"):
        chain.run_until(lambda: False)
    # The process stops: leaving the group joins the chain, which raises the failure again.
    with pytest.raises(RuntimeError, match="database down"):
        chain.consumer.close()
    assert chain.committed() == 0
    assert fakes.scratch_paths
    assert not fakes.scratch_paths[0].exists()


def test_a_task_started_too_often_ends_in_error_unread(tmp_path: Path) -> None:
    fakes = Fakes(tmp_path)
    fakes.tasks = {1: make_task(1, attempts=2)}  # claimed now for the third time
    chain = make_chain(fakes, [request(1)], max_attempts=2)
    chain.run_until(lambda: len(fakes.recorded) == 1)
    chain.finish()
    assert chain.committed() == 1
    assert fakes.reads == []
    assert fakes.recorded == [(1, f"error: {INTERNAL_ERROR}")]
    assert chain.sample("workers_assemble_resumed_total") == 1

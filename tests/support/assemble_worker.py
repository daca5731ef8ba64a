"""The assemble worker's integration setup: a topic of its own, an organization, blob
storage in a temporary directory, and `workers run assemble` on them."""

from __future__ import annotations

import uuid
from pathlib import Path

from confluent_kafka import Producer
from redis import Redis

from harness.assemble import (
    AssembleOrg,
    StoredFile,
    create_org,
    create_task,
    produce_request,
    store_file,
    task_row,
)
from harness.kafka import make_topics, unique_name
from harness.waiting import wait_for
from harness.worker_process import WorkerProcess
from tests.support.kafka import read_available
from workers.assemble.definition import DLQ_TOPIC
from workers.common.assemble_requests import AssembleStatus, decode_status, status_key
from workers.common.settings import Settings
from workers.common.storage import FilesystemBlobStorage


class AssembleSetup:
    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.settings = settings
        self.topic = unique_name("assemble")
        make_topics(settings, self.topic, DLQ_TOPIC, partitions=1)
        self.storage_root = tmp_path / "blobs"
        self.storage_root.mkdir()
        self.scratch = tmp_path / "scratch"
        self.scratch.mkdir()
        self.storage = FilesystemBlobStorage(self.storage_root)
        self.org: AssembleOrg = create_org(settings)
        self.producer = Producer(settings.kafka_client_config())

    def close(self) -> None:
        self.storage.close()

    def worker(self, *extra: str) -> WorkerProcess:
        return WorkerProcess(
            "assemble",
            "--topic", self.topic, "--consumer-group", self.topic,
            "--storage-url", f"file://{self.storage_root}", "--temp-dir", str(self.scratch),
            *extra,
            log_name=f"{self.topic}-{uuid.uuid4().hex[:6]}",
        )  # fmt: skip

    def store(self, data: bytes) -> StoredFile:
        return store_file(self.settings, self.storage, self.org.id, data)

    def task(self, kind: str, checksum: str, chunks: tuple[str, ...], **fields: object) -> int:
        return create_task(self.settings, self.org, kind, checksum, chunks, **fields)  # type: ignore[arg-type]

    def request(self, task_id: int, checksum: str) -> None:
        produce_request(self.producer, self.topic, task_id, self.org.id, checksum)

    def wait_for_state(self, task_id: int, state: str, timeout: float = 60) -> dict[str, object]:
        def reached() -> dict[str, object] | None:
            row = task_row(self.settings, task_id)
            return row if row["state"] == state else None

        return wait_for(reached, timeout, f"task {task_id} to be {state}", interval=0.05)

    def cached(
        self, kind: str, checksum: str, project_id: int | None = None
    ) -> AssembleStatus | None:
        with Redis.from_url(self.settings.redis_url) as redis:
            value = redis.get(status_key(self.org.id, kind, project_id, checksum))
        return decode_status(value)

    def dead_letters(self, count: int) -> list[dict[str, bytes]]:
        def mine() -> list[dict[str, bytes]] | None:
            found = [
                record.headers
                for record in read_available(self.settings, DLQ_TOPIC)
                if record.headers.get("original_topic") == self.topic.encode()
            ]
            return found if len(found) >= count else None

        return wait_for(mine, 60, f"{count} DLQ messages", interval=0.5)

    def scratch_files(self) -> list[str]:
        return sorted(path.name for path in self.scratch.iterdir())


def metric(worker: WorkerProcess, name: str, **labels: str) -> float:
    """The sum of the worker's samples of `name` with these labels (0 when there are none)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = worker.scrape_or_none()
    if text is None:
        return 0.0
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )

"""Each Procfile consumer's part in the observability tests: its own topics and options, and
traffic with good and bad messages (so every step and the DLQ export their series)."""

from __future__ import annotations

import gzip
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from harness.assemble import artifact_bundle, create_task, store_file
from harness.assemble import create_org as create_assemble_org
from harness.kafka import make_topics, unique_name
from harness.worker_process import WorkerProcess
from workers.billing.traffic import sample_traffic
from workers.common.assemble_requests import assemble_request_key, encode_assemble_request
from workers.common.chunk_uploads import encode_headers
from workers.common.projects import create_organization
from workers.common.settings import Settings
from workers.common.storage import FilesystemBlobStorage

Message = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


@dataclass
class Consumer:
    name: str
    topic: str
    healthcheck_file: Path
    traffic: Callable[[int], list[Message]]
    process: WorkerProcess | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def worker(self) -> WorkerProcess:
        assert self.process is not None
        return self.process


def billing_setup(settings: Settings, consumer: Consumer, tmp: Path) -> None:
    outcomes = unique_name("outcomes")
    make_topics(settings, outcomes)
    consumer.extra = ["--outcomes-topic", outcomes]

    def traffic(seed: int) -> list[Message]:
        valid: list[Message] = [(None, p.value, []) for p in sample_traffic(600, seed)]
        invalid: list[Message] = [(None, b'{"not": "a bucket"', [])] * 3
        return valid + invalid

    consumer.traffic = traffic


def blob_ingest_setup(settings: Settings, consumer: Consumer, tmp: Path) -> None:
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        org = create_organization(connection, f"obs-{uuid.uuid4().hex[:10]}", None).id
    consumer.extra = ["--storage-url", f"file://{tmp / 'blobs'}"]

    def traffic(seed: int) -> list[Message]:
        messages: list[Message] = []
        for index in range(5):
            data = f"observability chunk {seed} {index} {uuid.uuid4()}".encode() * 100
            checksum = hashlib.sha1(data).hexdigest()
            headers = encode_headers(org, checksum, "gzip", 1_700_000_000_000)
            messages.append((checksum.encode(), gzip.compress(data), headers))
        # Bad input: a wrong checksum and an organization that does not exist.
        data = b"mismatched"
        messages.append((None, data, encode_headers(org, "0" * 40, "identity", 0)))
        checksum = hashlib.sha1(data).hexdigest()
        messages.append((None, data, encode_headers(2**62, checksum, "identity", 0)))
        return messages

    consumer.traffic = traffic


def assemble_setup(settings: Settings, consumer: Consumer, tmp: Path) -> None:
    org = create_assemble_org(settings, prefix="obs")
    root = tmp / "assemble-blobs"
    root.mkdir()
    consumer.extra = ["--storage-url", f"file://{root}", "--temp-dir", str(tmp)]

    def traffic(seed: int) -> list[Message]:
        messages: list[Message] = []
        storage = FilesystemBlobStorage(root)
        try:
            for _ in range(3):
                bundle = artifact_bundle(org.slug, f"obs-{seed}", 4096, uuid.uuid4())
                stored = store_file(settings, storage, org.id, bundle)
                task = create_task(settings, org, "artifact_bundle", stored.checksum, stored.chunks)
                key = assemble_request_key(stored.checksum)
                messages.append((key, encode_assemble_request(task, org.id, stored.checksum), []))
        finally:
            storage.close()
        # Bad input: not a request, and a request for a task that does not exist.
        messages.append((None, b'{"task_id": "seven"}', []))
        checksum = hashlib.sha1(f"no such task {seed}".encode()).hexdigest()
        messages.append((None, encode_assemble_request(2**62, org.id, checksum), []))
        return messages

    consumer.traffic = traffic


# How each consumer gets its own topics, options and traffic (one entry per Procfile consumer).
SETUPS: dict[str, Callable[[Settings, Consumer, Path], None]] = {
    "assemble": assemble_setup,
    "billing": billing_setup,
    "blob-ingest": blob_ingest_setup,
}

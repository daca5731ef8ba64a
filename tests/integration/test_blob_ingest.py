"""The blob-ingest worker against the real Kafka, PostgreSQL and storage."""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import signal
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from confluent_kafka import Producer

from harness.kafka import make_topics, unique_name
from harness.waiting import wait_for
from harness.worker_process import WorkerProcess
from tests.support.kafka import read_available
from tests.support.s3_server import LocalS3Server
from workers.blob_ingest.definition import DLQ_TOPIC
from workers.blob_ingest.strategy import DEFAULT_DECODE_THREADS
from workers.blob_ingest.sweep import delete_garbage, find_garbage
from workers.common.chunk_uploads import MAX_CHUNK_SIZE, Encoding, encode_headers
from workers.common.database import create_pool
from workers.common.projects import create_organization
from workers.common.settings import Settings
from workers.common.storage import FilesystemBlobStorage, S3BlobStorage

pytestmark = pytest.mark.integration


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class Setup:
    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.settings = settings
        self.topic = unique_name("chunks")
        self.storage_root = tmp_path / "blobs"
        self.storage_url = f"file://{self.storage_root}"
        make_topics(settings, self.topic, DLQ_TOPIC, partitions=2)
        with psycopg.connect(settings.database_url, autocommit=True) as connection:
            self.org = create_organization(connection, f"blob-{uuid.uuid4().hex[:10]}", None).id
            self.other_org = create_organization(
                connection, f"blob-{uuid.uuid4().hex[:10]}", None
            ).id
        self.producer = Producer(
            {**settings.kafka_client_config(), "message.max.bytes": 16 * 1024 * 1024}
        )

    def worker(self, *extra: str, group: str | None = None) -> WorkerProcess:
        return WorkerProcess(
            "blob-ingest",
            "--topic", self.topic, "--consumer-group", group or self.topic,
            "--storage-url", self.storage_url, "--max-batch-time-ms", "50",
            *extra,
            log_name=f"{self.topic}-{group or 'main'}",
        )  # fmt: skip

    def send(
        self,
        data: bytes,
        org: int | None = None,
        encoding: Encoding = "identity",
        value: bytes | None = None,
        checksum: str | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        claimed = checksum or sha1(data)
        if value is None:
            value = gzip.compress(data) if encoding == "gzip" else data
        self.producer.produce(
            self.topic,
            value=value,
            key=claimed.encode(),
            headers=list(
                headers
                if headers is not None
                else encode_headers(org or self.org, claimed, encoding, 1_700_000_000_000)
            ),
        )
        self.producer.poll(0)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0

    def rows(self, checksums: Sequence[str]) -> dict[str, tuple[int, str, int, list[int]]]:
        with psycopg.connect(self.settings.database_url) as connection:
            found = connection.execute(
                "SELECT b.checksum, b.id, b.path, b.size, "
                "array_agg(o.organization_id ORDER BY o.organization_id) "
                "FROM blobs b LEFT JOIN blob_owners o ON o.blob_id = b.id "
                "WHERE b.checksum = ANY(%s) GROUP BY b.id",
                (list(checksums),),
            ).fetchall()
        return {row[0]: (row[1], row[2], row[3], row[4]) for row in found}

    def wait_for_rows(
        self, checksums: Sequence[str], timeout: float = 60
    ) -> dict[str, tuple[int, str, int, list[int]]]:
        def complete() -> dict[str, tuple[int, str, int, list[int]]] | None:
            rows = self.rows(checksums)
            return rows if len(rows) == len(set(checksums)) else None

        return wait_for(complete, timeout, f"{len(set(checksums))} blob rows", interval=0.2)

    def objects(self) -> list[str]:
        storage = FilesystemBlobStorage(self.storage_root)
        try:
            return sorted(stored.path for stored in storage.iter_objects())
        finally:
            storage.close()

    def dead_letters(self, count: int) -> list[dict[str, bytes]]:
        def mine() -> list[dict[str, bytes]] | None:
            found = [
                r.headers
                for r in read_available(self.settings, DLQ_TOPIC)
                if r.headers.get("original_topic") == self.topic.encode()
            ]
            return found if len(found) >= count else None

        return wait_for(mine, 60, f"{count} DLQ messages", interval=0.5)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(Settings.from_env(), tmp_path)


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """About 250 KiB that expand to 256 MiB: 32 times the chunk limit."""
    bomb = gzip.compress(b"\0" * (256 * 1024 * 1024), compresslevel=6)
    assert len(bomb) < 512 * 1024
    return bomb


def test_raw_and_gzip_chunks_become_blobs_with_their_bytes_in_storage(setup: Setup) -> None:
    raw, zipped = os.urandom(5000), os.urandom(70_000)
    setup.send(raw)
    setup.send(zipped, encoding="gzip")
    setup.flush()
    worker = setup.worker()
    try:
        rows = setup.wait_for_rows([sha1(raw), sha1(zipped)])
    finally:
        assert worker.stop() == 0
    storage = FilesystemBlobStorage(setup.storage_root)
    for data in (raw, zipped):
        blob_id, path, size, owners = rows[sha1(data)]
        assert size == len(data)
        assert owners == [setup.org]
        assert storage.get(path) == data
        assert path != sha1(data)
        assert blob_id > 0
    storage.close()


def test_same_chunk_two_organizations_and_a_thousand_repeats_make_one_blob(
    setup: Setup,
) -> None:
    shared, repeated = os.urandom(3000), os.urandom(4096)
    setup.send(shared, org=setup.org)
    setup.send(shared, org=setup.other_org, encoding="gzip")
    for _ in range(1000):
        setup.send(repeated)
    setup.flush()
    worker = setup.worker()
    try:
        wait_for(
            lambda: len(setup.rows([sha1(shared)]).get(sha1(shared), (0, "", 0, []))[3]) == 2,
            60,
            "two owners of the shared chunk",
        )
        rows = setup.wait_for_rows([sha1(shared), sha1(repeated)])
        metrics = wait_for(
            lambda: worker.metrics_containing("workers_blob_dedup_hits_total"), 30, "metrics"
        )
    finally:
        assert worker.stop() == 0
    assert sorted(rows[sha1(shared)][3]) == sorted([setup.org, setup.other_org])
    assert rows[sha1(repeated)][3] == [setup.org]
    assert len(setup.objects()) == 2
    assert "workers_blob_stored_bytes_total" in metrics


def test_bad_input_goes_to_the_dlq_with_reasons_and_the_rest_is_persisted(
    setup: Setup, gzip_bomb: bytes
) -> None:
    before, after = os.urandom(2048), os.urandom(2048)
    bomb = gzip_bomb
    nine_mib = os.urandom(9 * 1024 * 1024)
    claimed = sha1(b"x")
    setup.send(before)
    setup.send(b"", value=b"definitely not gzip", encoding="gzip", checksum=claimed)
    setup.send(b"", value=bomb, encoding="gzip", checksum=claimed)
    setup.send(b"payload", checksum=sha1(b"something else"))
    setup.send(b"payload", checksum=sha1(b"payload").upper())
    setup.send(b"payload", checksum=sha1(b"payload") + "\n")  # `$` allowed it: a full match
    setup.send(
        b"payload",
        headers=[
            h
            for h in encode_headers(setup.org, sha1(b"payload"), "identity", 1)
            if h[0] != "organization-id"
        ],
    )
    setup.send(nine_mib)
    setup.send(b"", checksum=sha1(b""))
    setup.send(b"payload", org=2**62)
    setup.send(after)
    setup.flush()
    worker = setup.worker()
    try:
        setup.wait_for_rows([sha1(before), sha1(after)])
        dead = setup.dead_letters(9)
        assert worker.process.poll() is None
    finally:
        assert worker.stop() == 0
    reasons = sorted(h["reason"].decode().split(":")[0] for h in dead)
    assert reasons == sorted(
        [
            "corrupt_gzip",
            "chunk_too_large",
            "checksum_mismatch",
            "invalid_checksum",
            "invalid_checksum",
            "missing_header",
            "chunk_too_large",
            "empty_chunk",
            "unknown_organization",
        ]
    )
    assert len(setup.objects()) == 2


def test_a_gzip_bomb_does_not_grow_resident_memory(setup: Setup, gzip_bomb: bytes) -> None:
    warmup = os.urandom(1024)
    setup.send(warmup)
    setup.flush()
    worker = setup.worker()
    try:
        setup.wait_for_rows([sha1(warmup)])
        baseline = worker.rss_bytes()
        for _ in range(5):
            setup.send(b"", value=gzip_bomb, encoding="gzip", checksum=sha1(b"bomb"))
        marker = os.urandom(1024)
        setup.send(marker)
        setup.flush()
        setup.wait_for_rows([sha1(marker)])
        grown = worker.rss_bytes() - baseline
    finally:
        assert worker.stop() == 0
    # Each bomb would expand to 256 MiB. Decoding stops at 8 MiB + 1 byte, which zlib holds
    # twice while it finishes its output, on each decode thread at once; the allocator may
    # keep all of that mapped, and the worker's own state may grow a little besides.
    bound = DEFAULT_DECODE_THREADS * 2 * (MAX_CHUNK_SIZE + 1) + 16 * 1024 * 1024
    assert grown < bound, f"resident memory grew by {grown / 2**20:.1f} MiB"


def test_two_workers_racing_on_the_same_chunks_leave_one_row_and_object_each(
    setup: Setup,
) -> None:
    chunks = [os.urandom(4096) for _ in range(300)]
    for data in chunks:
        setup.send(data)
    setup.flush()
    # Two consumer groups: both workers see every chunk and race on every checksum.
    first = setup.worker(group=f"{setup.topic}-a")
    second = setup.worker(group=f"{setup.topic}-b")
    try:
        setup.wait_for_rows([sha1(d) for d in chunks])
        persisted_all = 'workers_step_messages_out_total{step="persist",worker="blob-ingest"} 300.0'
        for worker in (first, second):
            wait_for(
                functools.partial(worker.metrics_containing, persisted_all),
                60,
                "both workers to persist every chunk",
            )
    finally:
        assert first.stop() == 0
        assert second.stop() == 0
    rows = setup.rows([sha1(d) for d in chunks])
    assert len(rows) == 300
    assert sorted(path for _, path, _, _ in rows.values()) == setup.objects()
    garbage = _sweep(setup, apply=False)
    assert garbage == (0, 0)


def _sweep(setup: Setup, apply: bool) -> tuple[int, int]:
    pool = create_pool(setup.settings, name="test-sweep")
    storage = FilesystemBlobStorage(setup.storage_root)
    try:
        report = find_garbage(pool, storage, timedelta(0))
        # Only this test's storage is swept; garbage rows elsewhere are not ours to count.
        found = (len(report.orphan_objects), 0)
        if apply:
            report.ownerless_blobs = []
            report.unassembled_blobs = []
            delete_garbage(pool, storage, report, timedelta(0))
        return found
    finally:
        storage.close()
        pool.close()


def test_kill_9_mid_stream_then_restart_persists_every_chunk_once(setup: Setup) -> None:
    chunks = [os.urandom(16 * 1024) for _ in range(3000)]
    for data in chunks:
        setup.send(data)
    setup.flush()
    checksums = [sha1(d) for d in chunks]
    # Static membership: the restarted member takes over at once, no session timeout.
    victim = setup.worker("--max-batch-size", "50", "--group-instance-id", "blob-0")
    wait_for(lambda: len(setup.rows(checksums)) >= 300, 60, "some chunks persisted")
    victim.stop(signal.SIGKILL)
    assert len(setup.rows(checksums)) < len(chunks), "killed too late"

    survivor = setup.worker("--group-instance-id", "blob-0")
    try:
        rows = setup.wait_for_rows(checksums, timeout=120)
    finally:
        assert survivor.stop() == 0
    assert all(owners == [setup.org] for _, _, _, owners in rows.values())
    referenced = {path for _, path, _, _ in rows.values()}
    objects = set(setup.objects())
    assert referenced <= objects
    orphans, _ = _sweep(setup, apply=True)
    assert orphans == len(objects - referenced)
    assert set(setup.objects()) == referenced
    storage = FilesystemBlobStorage(setup.storage_root)
    try:
        for data in chunks[:: len(chunks) // 20]:
            assert storage.get(rows[sha1(data)][1]) == data
    finally:
        storage.close()


def test_the_worker_stores_blobs_in_s3_compatible_storage(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LocalS3Server() as server:
        bucket = server.create_bucket()
        options = server.options()
        monkeypatch.setenv("S3_ENDPOINT_URL", server.endpoint_url)
        monkeypatch.setenv("S3_REGION", options.region or "us-east-1")
        monkeypatch.setenv("S3_ACCESS_KEY_ID", options.access_key_id or "")
        monkeypatch.setenv("S3_SECRET_ACCESS_KEY", options.secret_access_key or "")
        monkeypatch.setenv("S3_ADDRESSING_STYLE", "path")
        setup.storage_url = f"s3://{bucket}/fleet"
        chunks = [os.urandom(3000) for _ in range(20)]
        for data in chunks:
            setup.send(data, encoding="gzip")
        setup.flush()
        worker = setup.worker()
        try:
            rows = setup.wait_for_rows([sha1(d) for d in chunks])
        finally:
            assert worker.stop() == 0
        with S3BlobStorage(bucket, prefix="fleet", options=options) as storage:
            assert sorted(o.path for o in storage.iter_objects()) == sorted(
                path for _, path, _, _ in rows.values()
            )
            for data in chunks[:3]:
                assert storage.get(rows[sha1(data)][1]) == data

"""Blob lifecycle (docs/blob-lifecycle.md) against the real PostgreSQL and filesystem storage:
`refresh_blob_timestamps` and the sweep's retention for blobs no assembled file references.

The blobs here are 40 days old and the sweeps use a 30-day retention and window, so a sweep
with `--apply` on the shared database touches no other test's rows.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg_pool import ConnectionPool

from workers.blob_ingest.cli import blobs
from workers.blob_ingest.sweep import delete_garbage, find_garbage
from workers.common import blob_lifecycle
from workers.common.blob_lifecycle import refresh_blob_timestamps
from workers.common.database import create_pool
from workers.common.projects import Organization, create_organization
from workers.common.settings import Settings
from workers.common.storage import FilesystemBlobStorage, random_blob_path

pytestmark = pytest.mark.integration

OLD = timedelta(days=40)
YOUNG = timedelta(days=1)
RETENTION = timedelta(days=30)
SWEEP_30_DAYS = ["sweep", "--older-than", "30d", "--retention", "30d"]


@dataclass(frozen=True)
class Blob:
    id: int
    path: str
    checksum: str


@dataclass
class Setup:
    connection: psycopg.Connection
    storage: FilesystemBlobStorage
    organization: Organization
    url: str
    blob_ids: list[int]

    def blob(self, age: timedelta, *, owned: bool = True) -> Blob:
        data = uuid.uuid4().bytes
        blob = Blob(uuid.uuid4().int % 2**62, random_blob_path(), hashlib.sha1(data).hexdigest())
        self.storage.put_many([(blob.path, data)])
        self.connection.execute(
            "INSERT INTO blobs (id, path, size, checksum, timestamp) "
            "VALUES (%s, %s, %s, %s, now() - %s)",
            (blob.id, blob.path, len(data), blob.checksum, age),
        )
        if owned:
            self.connection.execute(
                "INSERT INTO blob_owners (blob_id, organization_id) VALUES (%s, %s)",
                (blob.id, self.organization.id),
            )
        self.blob_ids.append(blob.id)
        return blob

    def assembled_file(self, *chunks: Blob) -> None:
        checksum = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
        self.connection.execute(
            "INSERT INTO assembled_files (organization_id, kind, name, checksum, chunks, size) "
            "VALUES (%s, 'artifact_bundle', 'bundle.zip', %s, %s, 2)",
            (self.organization.id, checksum, [c.checksum for c in chunks]),
        )

    def assemble_task(self, state: str, *chunks: Blob) -> None:
        checksum = hashlib.sha1(uuid.uuid4().bytes).hexdigest()
        self.connection.execute(
            "INSERT INTO assemble_tasks (organization_id, kind, checksum, name, chunks, state) "
            "VALUES (%s, 'artifact_bundle', %s, 'bundle.zip', %s, %s)",
            (self.organization.id, checksum, [c.checksum for c in chunks], state),
        )

    def rows(self) -> set[int]:
        found = self.connection.execute(
            "SELECT id FROM blobs WHERE id = ANY(%s)", (self.blob_ids,)
        ).fetchall()
        return {row[0] for row in found}

    def age(self, blob: Blob) -> timedelta:
        row = self.connection.execute(
            "SELECT now() - timestamp FROM blobs WHERE id = %s", (blob.id,)
        ).fetchone()
        assert row is not None
        age: timedelta = row[0]
        return age


@pytest.fixture
def setup(settings: Settings, tmp_path: Path) -> Iterator[Setup]:
    root = tmp_path / "blobs"
    storage = FilesystemBlobStorage(root)
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        organization = create_organization(connection, f"life-{uuid.uuid4().hex[:8]}", None)
        made = Setup(connection, storage, organization, f"file://{root}", [])
        try:
            yield made
        finally:
            connection.execute("DELETE FROM blobs WHERE id = ANY(%s)", (made.blob_ids,))
            connection.execute("DELETE FROM organizations WHERE id = %s", (organization.id,))
            storage.close()


@pytest.fixture
def pool(settings: Settings) -> Iterator[ConnectionPool]:
    created = create_pool(settings, name="test-blob-lifecycle")
    yield created
    created.close()


def test_sweep_deletes_old_blobs_no_file_references_only_with_apply(
    setup: Setup, tmp_path: Path
) -> None:
    referenced = setup.blob(OLD)
    setup.assembled_file(referenced)
    abandoned = setup.blob(OLD)
    young = setup.blob(YOUNG)
    awaited = setup.blob(OLD)
    setup.assemble_task("assembling", awaited)
    created = setup.blob(OLD)
    setup.assemble_task("created", created)
    failed = setup.blob(OLD)
    setup.assemble_task("error", failed)
    ownerless_referenced = setup.blob(OLD, owned=False)
    setup.assembled_file(ownerless_referenced)
    mine = set(setup.blob_ids)
    runner = CliRunner()

    dry = runner.invoke(
        blobs,
        ["sweep", "--older-than", "30d", "--storage-url", setup.url],
        env={"BLOB_RETENTION": "30d"},
    )
    assert dry.exit_code == 0, dry.output
    assert f"unassembled blob  {abandoned.id}  {abandoned.path}" in dry.output
    assert f"unassembled blob  {failed.id}  {failed.path}" in dry.output
    for kept in (referenced, young, awaited, created, ownerless_referenced):
        assert str(kept.id) not in dry.output
    assert "would delete objects=0 ownerless=0 unassembled=2 (dry run" in dry.output
    assert setup.rows() == mine
    assert all(setup.storage.exists(path) for path in (abandoned.path, failed.path))

    metrics_file = tmp_path / "sweep.prom"
    applied = runner.invoke(
        blobs,
        [
            *SWEEP_30_DAYS,
            "--storage-url",
            setup.url,
            "--apply",
            "--metrics-file",
            str(metrics_file),
        ],
    )
    assert applied.exit_code == 0, applied.output
    assert "deleted objects=0 ownerless=0 unassembled=2" in applied.output
    exported = metrics_file.read_text()
    assert 'workers_blob_sweep_found{kind="unassembled_blob"} 2.0' in exported
    assert 'workers_blob_sweep_deleted{kind="unassembled_blob"} 2.0' in exported
    assert 'workers_blob_sweep_deleted{kind="ownerless_blob"} 0.0' in exported
    assert setup.rows() == mine - {abandoned.id, failed.id}
    assert not setup.storage.exists(abandoned.path)
    assert not setup.storage.exists(failed.path)
    for kept in (referenced, young, awaited, created, ownerless_referenced):
        assert setup.storage.exists(kept.path)


def test_a_file_assembled_between_find_and_delete_saves_its_blobs(
    setup: Setup, pool: ConnectionPool
) -> None:
    assembled_meanwhile = setup.blob(OLD)
    requested_meanwhile = setup.blob(OLD)
    abandoned = setup.blob(OLD)
    report = find_garbage(pool, setup.storage, RETENTION, retention=RETENTION)
    found = {blob.id for blob in report.unassembled_blobs}
    assert {assembled_meanwhile.id, requested_meanwhile.id, abandoned.id} <= found

    setup.assembled_file(assembled_meanwhile)
    setup.assemble_task("created", requested_meanwhile)
    report.unassembled_blobs = [b for b in report.unassembled_blobs if b.id in setup.blob_ids]
    delete_garbage(pool, setup.storage, report, RETENTION, retention=RETENTION)

    assert report.deleted_unassembled_blobs == 1
    assert setup.rows() == {assembled_meanwhile.id, requested_meanwhile.id}
    assert setup.storage.exists(assembled_meanwhile.path)
    assert setup.storage.exists(requested_meanwhile.path)
    assert not setup.storage.exists(abandoned.path)


def test_refresh_blob_timestamps_makes_old_blobs_young(
    setup: Setup, pool: ConnectionPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blob_lifecycle, "REFRESH_BATCH", 2)  # three blobs: two statements
    old = [setup.blob(OLD) for _ in range(3)]
    checksums = [b.checksum for b in old]
    unknown = hashlib.sha1(uuid.uuid4().bytes).hexdigest()

    changed = refresh_blob_timestamps(setup.connection, [*checksums, checksums[0], unknown])

    assert changed == 3
    assert all(setup.age(blob) < timedelta(minutes=1) for blob in old)
    report = find_garbage(pool, setup.storage, RETENTION, retention=RETENTION)
    assert not {b.id for b in old} & {b.id for b in report.unassembled_blobs}
    assert refresh_blob_timestamps(setup.connection, []) == 0


def test_sweep_refuses_a_retention_the_12_hour_refresh_does_not_cover() -> None:
    refused = CliRunner().invoke(blobs, ["sweep", "--retention", "12h"])
    assert refused.exit_code == 2
    assert "Invalid value for '--retention': the retention must be longer than 12h" in (
        refused.output
    )
    garbled = CliRunner().invoke(blobs, ["sweep", "--retention", "one day"])
    assert garbled.exit_code == 2
    assert "use a whole number and s, m, h or d" in garbled.output

"""`workers chunks produce` and `workers blobs sweep` against the real stack."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from harness.kafka import make_topics, unique_name
from tests.support.kafka import read_all
from workers.blob_ingest.cli import blobs, chunks, parse_duration
from workers.blob_ingest.decode import verify_chunk
from workers.common.chunk_uploads import MAX_CHUNK_SIZE, parse_headers
from workers.common.projects import create_organization
from workers.common.settings import Settings
from workers.common.storage import FilesystemBlobStorage, random_blob_path

pytestmark = pytest.mark.integration


def test_produce_splits_files_into_verified_8_mib_chunks(
    settings: Settings, tmp_path: Path
) -> None:
    topic = unique_name("produce")
    make_topics(settings, topic, partitions=2)
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        org = create_organization(connection, f"prod-{uuid.uuid4().hex[:8]}", None)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2 * MAX_CHUNK_SIZE + 12345))
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello chunk\n" * 1000)

    result = CliRunner().invoke(
        chunks, ["produce", str(big), str(small), "--org", org.slug, "--gzip", "--topic", topic]
    )
    assert result.exit_code == 0, result.output
    assert (
        f"files=2 chunks=4 bytes={big.stat().st_size + small.stat().st_size} failed=0"
        in result.output
    )

    records = read_all(settings, topic, 4)
    assert len(records) == 4
    expected = set()
    for path in (big, small):
        data = path.read_bytes()
        for start in range(0, len(data), MAX_CHUNK_SIZE):
            expected.add(hashlib.sha1(data[start : start + MAX_CHUNK_SIZE]).hexdigest())
    seen = set()
    for record in records:
        headers = parse_headers(list(record.headers.items()))
        chunk = verify_chunk(headers, record.value)
        assert headers.organization_id == org.id
        assert headers.encoding == "gzip"
        assert record.key == chunk.checksum.encode()
        seen.add(chunk.checksum)
    assert seen == expected


def test_produce_refuses_an_unknown_organization(tmp_path: Path) -> None:
    file = tmp_path / "f"
    file.write_bytes(b"x")
    result = CliRunner().invoke(chunks, ["produce", str(file), "--org", "no-such-org-xyz"])
    assert result.exit_code == 1
    assert "no organization with slug 'no-such-org-xyz'" in result.output


def test_sweep_finds_then_deletes_orphans_and_ownerless_blobs(
    settings: Settings, tmp_path: Path
) -> None:
    root = tmp_path / "blobs"
    storage = FilesystemBlobStorage(root)
    orphan, ownerless, owned, fresh = (random_blob_path() for _ in range(4))
    storage.put_many([(orphan, b"o"), (ownerless, b"u"), (owned, b"r"), (fresh, b"f")])
    two_days_ago = time.time() - 48 * 3600
    for path in (orphan, ownerless, owned):
        os.utime(root / path, (two_days_ago, two_days_ago))
    blob_ids = [int(uuid.uuid4().int % 2**62), int(uuid.uuid4().int % 2**62)]
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        org = create_organization(connection, f"sweep-{uuid.uuid4().hex[:8]}", None)
        connection.execute(
            "INSERT INTO blobs (id, path, size, checksum, timestamp) VALUES "
            "(%s, %s, 1, %s, now() - interval '25 hours'), "
            "(%s, %s, 1, %s, now() - interval '25 hours')",
            (
                blob_ids[0], ownerless, uuid.uuid4().hex + "00000000",
                blob_ids[1], owned, uuid.uuid4().hex + "00000000",
            ),
        )  # fmt: skip
        connection.execute(
            "INSERT INTO blob_owners (blob_id, organization_id) VALUES (%s, %s)",
            (blob_ids[1], org.id),
        )
    url = f"file://{root}"
    # The owned blob, unassembled for 25 h, is within a 30-day retention: this test is about
    # crash leftovers (tests/integration/test_blob_lifecycle.py is about the retention).
    sweep = ["sweep", "--older-than", "24h", "--retention", "30d", "--storage-url", url]
    runner = CliRunner()
    dry = runner.invoke(blobs, sweep)
    assert dry.exit_code == 0, dry.output
    assert f"orphan object     {orphan}" in dry.output
    assert f"ownerless blob    {blob_ids[0]}  {ownerless}" in dry.output
    assert owned not in dry.output
    assert fresh not in dry.output
    assert storage.exists(orphan)

    metrics_file = tmp_path / "sweep.prom"
    applied = runner.invoke(blobs, [*sweep, "--apply", "--metrics-file", str(metrics_file)])
    assert applied.exit_code == 0, applied.output
    assert "deleted objects=1 ownerless=1 unassembled=0" in applied.output
    exported = metrics_file.read_text()
    assert 'workers_blob_sweep_deleted{kind="orphan_object"} 1.0' in exported
    assert 'workers_blob_sweep_deleted{kind="ownerless_blob"} 1.0' in exported
    assert not storage.exists(orphan)
    assert not storage.exists(ownerless)
    assert storage.exists(owned)
    assert storage.exists(fresh)
    with psycopg.connect(settings.database_url) as connection:
        left = connection.execute("SELECT id FROM blobs WHERE id = ANY(%s)", (blob_ids,)).fetchall()
    assert left == [(blob_ids[1],)]
    again = runner.invoke(blobs, sweep)
    assert "would delete objects=0 ownerless=0" in again.output
    storage.close()


def test_durations_parse() -> None:
    assert parse_duration("24h").total_seconds() == 86400
    assert parse_duration("90s").total_seconds() == 90
    assert parse_duration("2d").total_seconds() == 172800
    import click

    with pytest.raises(click.BadParameter, match="use a whole number and s, m, h or d"):
        parse_duration("1 week")

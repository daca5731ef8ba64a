"""`workers run assemble` against the real Kafka, PostgreSQL, Redis and blob storage: each
request's file reaches `ok` or `error` with upstream's detail, finished files are never
assembled again, bad requests go to the DLQ (docs/assemble.md)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from harness.assemble import PROJECT, artifact_bundle, sha1
from harness.waiting import wait_for
from tests.support.assemble_worker import AssembleSetup, metric
from tests.support.kafka import produce
from workers.assemble.outcomes import CHECKSUM_MISMATCH, NOT_ALL_CHUNKS, TOO_LARGE
from workers.common.assemble_requests import AssembleStatus
from workers.common.settings import Settings

pytestmark = pytest.mark.integration

BUNDLE = "artifact_bundle"
FILES = "workers_assemble_files_total"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[AssembleSetup]:
    setup = AssembleSetup(Settings.from_env(), tmp_path)
    yield setup
    setup.close()


def test_missing_chunks_wrong_checksums_and_large_files_end_in_error(setup: AssembleSetup) -> None:
    first, second = os.urandom(3000), os.urandom(4000)
    stored = setup.store(first + second)
    absent = sha1(b"never uploaded")
    missing = setup.task(BUNDLE, sha1(first + second + b"?"), (*stored.chunks, absent))
    mismatch = setup.task(BUNDLE, sha1(b"something else"), stored.chunks)
    vanished_file = setup.store(os.urandom(5000))
    vanished = setup.task(BUNDLE, vanished_file.checksum, vanished_file.chunks)
    for path in [p for p in setup.storage_root.rglob("*") if p.is_file()]:
        if path.read_bytes() != first + second:
            path.unlink()  # the blob row stays; its object is gone
    large_file = setup.store(os.urandom(64 * 1024))
    large = setup.task(BUNDLE, large_file.checksum, large_file.chunks)

    worker = setup.worker("--max-assemble-bytes", str(32 * 1024))
    try:
        for task_id, checksum in [
            (missing, sha1(first + second + b"?")),
            (mismatch, sha1(b"something else")),
            (vanished, vanished_file.checksum),
            (large, large_file.checksum),
        ]:
            setup.request(task_id, checksum)
        expected = {
            missing: NOT_ALL_CHUNKS,
            mismatch: CHECKSUM_MISMATCH,
            vanished: NOT_ALL_CHUNKS,
            large: TOO_LARGE,
        }
        for task_id, detail in expected.items():
            row = setup.wait_for_state(task_id, "error")
            assert (row["detail"], row["attempts"], row["assembled_file_id"]) == (detail, 1, None)
        assert setup.cached(BUNDLE, sha1(b"something else")) == AssembleStatus(
            "error", CHECKSUM_MISMATCH
        )
        wait_for(
            lambda: metric(worker, FILES, kind=BUNDLE, result="error") == 4,
            30,
            "four files counted as errors",
        )
        # Only the mismatched file was read whole; nothing is left in the scratch directory.
        assert metric(worker, "workers_assemble_read_bytes_total") == len(first + second)
        assert setup.scratch_files() == []
    finally:
        assert worker.stop() == 0


def test_requests_for_finished_files_do_no_work(setup: AssembleSetup) -> None:
    stored = setup.store(os.urandom(10_000))
    done = setup.task(BUNDLE, stored.checksum, stored.chunks, state="ok")
    failed_checksum = sha1(b"failed")
    failed = setup.task(BUNDLE, failed_checksum, stored.chunks, state="error")
    with psycopg.connect(setup.settings.database_url, autocommit=True) as connection:
        connection.execute("UPDATE assemble_tasks SET detail = 'earlier' WHERE id = %s", (failed,))
    worker = setup.worker()
    try:
        for _ in range(3):
            setup.request(done, stored.checksum)
            setup.request(failed, failed_checksum)
        skipped = "workers_assemble_skipped_total"
        wait_for(
            lambda: (
                (metric(worker, skipped, state="ok"), metric(worker, skipped, state="error"))
                == (3.0, 3.0)
            ),
            60,
            "six requests skipped",
        )
        assert setup.cached(BUNDLE, stored.checksum) == AssembleStatus("ok")
        assert setup.cached(BUNDLE, failed_checksum) == AssembleStatus("error", "earlier")
        assert metric(worker, FILES) == 0
        assert metric(worker, "workers_assemble_read_bytes_total") == 0
        for task_id in (done, failed):
            assert (
                setup.wait_for_state(task_id, "ok" if task_id == done else "error")["attempts"] == 0
            )
    finally:
        assert worker.stop() == 0


def test_bad_and_unknown_requests_go_to_the_dlq_and_the_rest_goes_on(setup: AssembleSetup) -> None:
    stored = setup.store(os.urandom(1000))
    wrong = setup.task(BUNDLE, sha1(b"wrong"), stored.chunks)
    produce(
        setup.settings,
        setup.topic,
        [
            (None, b"not json"),
            (None, b'{"task_id": 1, "organization_id": 2}'),
        ],
    )
    setup.request(2**62, stored.checksum)  # no such task
    setup.request(wrong, stored.checksum)  # a task, but not of that file
    setup.request(wrong, sha1(b"wrong"))
    worker = setup.worker()
    try:
        assert setup.wait_for_state(wrong, "error")["detail"] == CHECKSUM_MISMATCH
        reasons = sorted(headers["reason"].decode() for headers in setup.dead_letters(4))
        assert [reason.split(":", 1)[0] for reason in reasons] == [
            "invalid_request",
            "invalid_request",
            "unknown_task",
            "unknown_task",
        ]
        assert "the value is not JSON" in reasons[0] + reasons[1]
    finally:
        assert worker.stop() == 0


def test_an_artifact_bundle_is_assembled_and_indexed(setup: AssembleSetup) -> None:
    debug_id = uuid.uuid4()
    bundle = artifact_bundle(setup.org.slug, "1.0", 20 * 1024 * 1024, debug_id)
    stored = setup.store(bundle)
    assert len(stored.chunks) == 3
    task_id = setup.task(
        BUNDLE, stored.checksum, stored.chunks, projects=(PROJECT, "no-such-project"), release="1.0"
    )
    worker = setup.worker()
    try:
        setup.request(task_id, stored.checksum)
        row = setup.wait_for_state(task_id, "ok")
        assert row["attempts"] == 1
        file_id = row["assembled_file_id"]
        with psycopg.connect(setup.settings.database_url) as connection:
            (size, chunks) = connection.execute(
                "SELECT size, chunks FROM assembled_files WHERE id = %s", (file_id,)
            ).fetchone() or (None, None)
            assert (size, [c.strip() for c in chunks or []]) == (len(bundle), list(stored.chunks))
            (bundle_id,) = connection.execute(
                "SELECT id FROM artifact_bundles WHERE assembled_file_id = %s", (file_id,)
            ).fetchone() or (None,)
            projects = connection.execute(
                "SELECT project_id FROM project_artifact_bundles WHERE artifact_bundle_id = %s",
                (bundle_id,),
            ).fetchall()
            releases = connection.execute(
                "SELECT release_name, dist_name FROM release_artifact_bundles "
                "WHERE artifact_bundle_id = %s",
                (bundle_id,),
            ).fetchall()
            debug_ids = connection.execute(
                "SELECT debug_id, source_file_type FROM debug_id_artifact_bundles "
                "WHERE artifact_bundle_id = %s",
                (bundle_id,),
            ).fetchall()
            index = connection.execute(
                "SELECT url, debug_id FROM artifact_bundle_index WHERE artifact_bundle_id = %s",
                (bundle_id,),
            ).fetchall()
        assert projects == [(setup.org.project_id,)]
        assert releases == [("1.0", "")]
        assert debug_ids == [(debug_id, "minified_source")]
        assert index == [("~/main.js", debug_id)]
        assert setup.cached(BUNDLE, stored.checksum) == AssembleStatus("ok")
        wait_for(lambda: metric(worker, FILES, kind=BUNDLE, result="ok") == 1, 30, "one file")
        assert setup.scratch_files() == []
    finally:
        assert worker.stop() == 0


def test_a_debug_file_is_detected_and_a_file_that_is_not_one_is_refused(
    setup: AssembleSetup,
) -> None:
    # Bytes of its own after the ELF (which symbolic ignores): blobs are deduplicated by
    # checksum across the database, and /bin/ls stored by an earlier run lives in another
    # storage directory.
    elf = Path("/bin/ls").read_bytes() + os.urandom(64)
    stored = setup.store(elf)
    good = setup.task("dif", stored.checksum, stored.chunks, name="ls")
    junk = setup.store(os.urandom(4096))
    bad = setup.task("dif", junk.checksum, junk.chunks, name="junk")
    worker = setup.worker()
    try:
        setup.request(good, stored.checksum)
        setup.request(bad, junk.checksum)
        assert setup.wait_for_state(good, "ok")["attempts"] == 1
        refused = setup.wait_for_state(bad, "error")
        assert refused["detail"]
        assert refused["detail"] != "internal server error"
        with psycopg.connect(setup.settings.database_url) as connection:
            objects = connection.execute(
                "SELECT d.project_id, d.cpu_name, d.file_format FROM debug_files d "
                "JOIN assemble_tasks t ON t.assembled_file_id = d.assembled_file_id "
                "WHERE t.id = %s",
                (good,),
            ).fetchall()
        assert objects == [(setup.org.project_id, "x86_64", "elf")]
        assert setup.cached("dif", stored.checksum, setup.org.project_id) == AssembleStatus("ok")
        assert setup.scratch_files() == []  # each debug file's scratch file, removed
    finally:
        assert worker.stop() == 0

"""kill -9 of the assemble worker in the middle of a file: the restarted worker assembles it
again from its chunks, once (docs/assemble.md, Crash and restart)."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from harness.assemble import artifact_bundle
from harness.waiting import wait_for
from tests.support.assemble_worker import AssembleSetup, metric
from workers.common.assemble_requests import AssembleStatus
from workers.common.settings import Settings

pytestmark = pytest.mark.integration

#: Large enough that the worker is still reading it when it is killed (seconds, not ms).
BUNDLE_BYTES = 768 * 1024 * 1024
READ_BYTES = "workers_assemble_read_bytes_total"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[AssembleSetup]:
    setup = AssembleSetup(Settings.from_env(), tmp_path)
    yield setup
    setup.close()


def test_a_file_interrupted_by_kill_9_is_assembled_by_the_restarted_worker(
    setup: AssembleSetup,
) -> None:
    bundle = artifact_bundle(setup.org.slug, None, BUNDLE_BYTES, uuid.uuid4())
    stored = setup.store(bundle)
    del bundle
    task_id = setup.task("artifact_bundle", stored.checksum, stored.chunks)
    setup.request(task_id, stored.checksum)

    first = setup.worker()
    try:
        setup.wait_for_state(task_id, "assembling")
        # Mid-file: some of its chunks read, not all (a bundle is read, never written).
        wait_for(
            lambda: 0 < metric(first, READ_BYTES) < stored.size or None,
            30,
            "the worker to be reading the file",
            interval=0.005,
        )
    finally:
        first.stop(signal.SIGKILL)
    row = setup.wait_for_state(task_id, "assembling")
    assert row["attempts"] == 1
    assert setup.cached("artifact_bundle", stored.checksum) == AssembleStatus("assembling")
    assert setup.scratch_files() == []

    second = setup.worker()
    try:
        row = setup.wait_for_state(task_id, "ok", timeout=120)
        assert row["attempts"] == 2
        with psycopg.connect(setup.settings.database_url) as connection:
            files = connection.execute(
                "SELECT id, size FROM assembled_files WHERE organization_id = %s",
                (setup.org.id,),
            ).fetchall()
        assert files == [(row["assembled_file_id"], stored.size)]
        assert setup.cached("artifact_bundle", stored.checksum) == AssembleStatus("ok")
        wait_for(
            lambda: metric(second, "workers_assemble_resumed_total") == 1, 30, "one resumed task"
        )
        assert setup.scratch_files() == []
    finally:
        assert second.stop() == 0

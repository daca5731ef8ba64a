"""The README's main job, end to end: `workers demo` as a newcomer runs it."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from workers.billing.message import BucketError, parse_bucket
from workers.billing.traffic import sample_traffic_for_projects
from workers.common.chunk_uploads import MAX_CHUNK_SIZE
from workers.common.settings import Settings
from workers.demo import DEMO_CUSTOM_PROJECTS, SAMPLE_SEED, _demo_projects, _sample_files

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _unique_chunk_bytes(files: list[Path]) -> tuple[int, int, int]:
    """(chunks, unique chunks, bytes of the unique chunks) of the demo's sample files."""
    sizes: dict[str, int] = {}
    count = 0
    for path in files:
        data = path.read_bytes()
        for start in range(0, len(data), MAX_CHUNK_SIZE):
            piece = data[start : start + MAX_CHUNK_SIZE]
            sizes[hashlib.sha1(piece).hexdigest()] = len(piece)
            count += 1
    return count, len(sizes), sum(sizes.values())


def test_demo_processes_every_sample_message_and_reports_the_dlq(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workers", "demo", "--messages", "3000", "--timeout", "120"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={
            "COLUMNS": "200",
            "PATH": "/usr/bin:/bin",
            "HOME": str(Path.home()),
            # A shared stack (several work trees) is named by its state dir; unset in CI.
            **{k: v for k, v in os.environ.items() if k == "WORKERS_STATE_DIR"},
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {
        cells[0]: cells
        for line in result.stdout.splitlines()
        if line.startswith("│ ")
        for cells in [[cell.strip() for cell in line.strip("│").split("│")]]
    }
    _, produced, processed, dlq, output, details = rows["billing"]
    assert (produced, processed) == ("3000", "3000")
    # Exactly the malformed sample messages reach the DLQ (same seed as the demo).
    malformed = 0
    projects = _demo_projects(Settings.from_env())
    pairs = [(p.organization_id, p.id) for p in projects]
    custom = [(p.organization_id, p.id) for p in projects if p.slug in DEMO_CUSTOM_PROJECTS]
    for message in sample_traffic_for_projects(3000, SAMPLE_SEED, pairs, custom_projects=custom):
        try:
            parse_bucket(message.value)
        except BucketError:
            malformed += 1
    assert malformed > 0
    assert int(dlq) == malformed
    assert re.fullmatch(r"outcomes-billing: \d+", output)
    assert int(output.split(": ")[1]) > 0
    outcomes = int(output.split(": ")[1])
    match = re.fullmatch(
        r"span: (\d+) outcomes, quantity \d+; transaction: (\d+) outcomes, quantity \d+; "
        r"flagged: (.+)",
        details,
    )
    assert match is not None, details
    assert int(match.group(1)) + int(match.group(2)) == outcomes
    assert match.group(3) == ", ".join(DEMO_CUSTOM_PROJECTS)

    # The real sentry-cli uploaded a debug file through the gateway: its chunks (none on a
    # rerun, when the file is already there) went to blob-ingest too.
    _, gateway_chunks, _, _, gateway_output, gateway_details = rows["gateway"]
    gateway_match = re.fullmatch(
        r"sentry-cli exit=0: (?:OK [0-9a-f-]+ \(demo-debug; \w+\)|Nothing to upload, all files "
        r"are on the server); bytes accepted=(\d+) files ok=1",
        gateway_details,
    )
    assert gateway_match is not None, gateway_details
    uploaded, uploaded_bytes = int(gateway_chunks), int(gateway_match.group(1))
    assert gateway_output == f"chunk-uploads: {uploaded}"

    # The sample files' chunks; the copy's chunks are dedup hits.
    chunks, unique, unique_bytes = _unique_chunk_bytes(_sample_files(tmp_path))
    _, produced, processed, dlq, output, details = rows["blob-ingest"]
    total_chunks = str(chunks + uploaded)
    assert (produced, processed, dlq) == (total_chunks, total_chunks, "0")
    match = re.fullmatch(r"blobs=(\d+) dedup hits=(\d+) bytes stored=(\d+)", details)
    assert match is not None, details
    blobs, dedup, stored = map(int, match.groups())
    # On a fresh stack 4 blobs are new; on a rerun all 7 chunks are already stored.
    assert (blobs, dedup) in ((unique + uploaded, chunks - unique), (uploaded, chunks))
    assert stored == (unique_bytes if blobs > uploaded else 0) + uploaded_bytes

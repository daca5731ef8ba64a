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
from workers.common.chunk_uploads import MAX_CHUNK_SIZE
from workers.common.settings import Settings
from workers.demo.billing import DEMO_CUSTOM_PROJECTS, demo_traffic
from workers.demo.blob_ingest import sample_files
from workers.demo.run import SAMPLE_SEED

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


def _summary(stdout: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The counts table's rows and each worker's lines under its name, by worker name."""
    lines = stdout.splitlines()
    rows = {
        cells[0]: cells
        for line in lines
        if line.startswith("│ ")
        for cells in [[cell.strip() for cell in line.strip("│").split("│")]]
    }
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines[max(i for i, line in enumerate(lines) if line.startswith("└")) :]:
        if line in rows:
            current = sections.setdefault(line, [])
        elif line.startswith("  ") and current is not None:
            current.append(line.strip())
        else:
            current = None
    return rows, sections


def test_demo_processes_every_sample_message_and_reports_the_dlq(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workers", "demo", "--messages", "3000", "--timeout", "120"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={
            "COLUMNS": "80",
            "PATH": "/usr/bin:/bin",
            "HOME": str(Path.home()),
            # A shared stack (several work trees) is named by its state dir; unset in CI.
            **{k: v for k, v in os.environ.items() if k == "WORKERS_STATE_DIR"},
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows, sections = _summary(result.stdout)
    # In 80 columns, no cell of the table wraps onto a second line.
    assert set(rows) == {"assemble", "billing", "blob-ingest"}, result.stdout
    # The assemble worker's own feed: 3 requests, 2 of them dead-lettered; on a fresh stack
    # it also assembles the debug file sentry-cli uploads through the gateway.
    _, produced, processed, dlq, output = rows["assemble"]
    assert (produced, dlq, output) == ("3", "2", "-")
    assert processed in ("3", "4")
    assembles = [line.strip() for line in sections["assemble"]]
    assert re.fullmatch(r"files ok=[01] error=[01] skipped=[0-2] bytes read=\d+", assembles[0])
    assert any(
        re.fullmatch(r"\d+ demo-debug \(debug\): ok, 1 object\(s\)", line) for line in assembles
    ), assembles
    _, produced, processed, dlq, output = rows["billing"]
    assert (produced, processed) == ("3000", "3000")
    # Exactly the malformed sample messages reach the DLQ (same seed as the demo).
    malformed = 0
    for message in demo_traffic(Settings.from_env(), 3000, SAMPLE_SEED):
        try:
            parse_bucket(message.value)
        except BucketError:
            malformed += 1
    assert malformed > 0
    assert int(dlq) == malformed
    assert re.fullmatch(r"outcomes-billing: \d+", output)
    outcomes = int(output.split(": ")[1])
    assert outcomes > 0
    categories = {}
    for line in sections["billing"][:-1]:
        match = re.fullmatch(r"(\w+): (\d+) outcomes, quantity \d+", line)
        assert match is not None, sections["billing"]
        categories[match.group(1)] = int(match.group(2))
    assert set(categories) == {"span", "transaction"}
    assert sum(categories.values()) == outcomes
    assert sections["billing"][-1] == "flagged: " + ", ".join(DEMO_CUSTOM_PROJECTS)

    # The real sentry-cli uploaded a debug file through the gateway: its chunks (none on a
    # rerun, when the file is already there) went to blob-ingest too.
    blob_lines = sections["blob-ingest"]
    assert blob_lines[1] == "gateway: sentry-cli exit=0", blob_lines
    assert re.fullmatch(
        r"OK [0-9a-f-]+ \(demo-debug; \w+( \w+)?\)|Nothing to upload, all files are on the server",
        blob_lines[2],
    ), blob_lines
    gateway_match = re.fullmatch(
        r"gateway: chunks=(\d+) to chunk-uploads, bytes accepted=(\d+), files ok=1",
        blob_lines[3],
    )
    assert gateway_match is not None, blob_lines
    # What sentry-cli was answered: on a fresh stack not_found, then created until the
    # worker's ok; on a rerun ok at once.
    assert re.fullmatch(
        r"gateway: assemble answers (not_found=1 → created=\d+ → (assembling=\d+ → )?)?ok=1",
        blob_lines[4],
    ), blob_lines
    uploaded, uploaded_bytes = map(int, gateway_match.groups())

    # The sample files' chunks; the copy's chunks are dedup hits.
    chunks, unique, unique_bytes = _unique_chunk_bytes(sample_files(tmp_path, SAMPLE_SEED))
    _, produced, processed, dlq, output = rows["blob-ingest"]
    total_chunks = str(chunks + uploaded)
    assert (produced, processed, dlq, output) == (total_chunks, total_chunks, "0", "-")
    match = re.fullmatch(r"blobs=(\d+) dedup hits=(\d+) bytes stored=(\d+)", blob_lines[0])
    assert match is not None, blob_lines
    blobs, dedup, stored = map(int, match.groups())
    # On a fresh stack 4 blobs are new; on a rerun all 7 chunks are already stored.
    assert (blobs, dedup) in ((unique + uploaded, chunks - unique), (uploaded, chunks))
    assert stored == (unique_bytes if blobs > uploaded else 0) + uploaded_bytes

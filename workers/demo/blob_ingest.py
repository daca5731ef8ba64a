"""The blob-ingest worker's part in `workers demo` (`BLOB_INGEST_DEMO`).

- fed by the real `workers chunks produce` of three sample files, as a user would run it;
- followed up, once those chunks are persisted, by the real `sentry-cli debug-files upload
  --wait` through a gateway subprocess (`workers.demo.gateway`): its chunks go to the
  worker's topic too;
- summarised from its /metrics: blobs created, dedup hits, bytes stored.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Final

from workers.common.demo_hooks import DemoContext, DemoFeed, DemoHooks
from workers.demo.gateway import upload_with_sentry_cli
from workers.demo.organization import DEMO_ORGANIZATION, demo_organization, demo_projects
from workers.demo.scrape import metric_total

# The project sentry-cli uploads the demo's debug file to, through the gateway.
DEMO_UPLOAD_PROJECT: Final = "backend"


def sample_files(directory: Path, seed: int) -> list[Path]:
    """Three files, the same on every run: 20 MiB of random bytes, an exact copy of it (every
    chunk a dedup hit) and 3 MiB of text."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    contents = {
        "firmware.bin": rng.randbytes(20 * 1024 * 1024),
        "release-notes.txt": b"".join(
            f"{line:08d} the quick brown fox jumps over the lazy dog\n".encode()
            for line in range(60_000)
        ),
    }
    contents["firmware-copy.bin"] = contents["firmware.bin"]
    paths = []
    for name, data in contents.items():
        path = directory / name
        if not path.exists() or path.stat().st_size != len(data):
            path.write_bytes(data)
        paths.append(path)
    return paths


def _feed(demo: DemoContext) -> DemoFeed:
    demo_organization(demo.settings)
    files = sample_files(demo.settings.state_dir / "demo-files", demo.seed)
    command = [
        sys.executable, "-m", "workers", "chunks", "produce", *map(str, files),
        "--org", DEMO_ORGANIZATION, "--gzip", "--topic", demo.topic,
    ]  # fmt: skip
    demo.echo(f"$ workers chunks produce --org {DEMO_ORGANIZATION} --gzip \\")
    demo.echo(f"    {' '.join(f.name for f in files)}")
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    demo.echo(result.stdout.strip())
    match = re.search(r"chunks=(\d+)", result.stdout)
    if result.returncode != 0 or match is None:
        raise RuntimeError("workers chunks produce failed")
    return DemoFeed(int(match.group(1)))


def _upload_through_gateway(demo: DemoContext) -> DemoFeed:
    """sentry-cli uploads a debug file through a gateway subprocess; the worker (running)
    persists its chunks, and `--wait` returns once the file is assembled."""
    demo_projects(demo.settings)
    demo.echo(
        "$ sentry-cli debug-files upload --wait demo-debug\n"
        f"  (SENTRY_URL=<gateway> SENTRY_ORG={DEMO_ORGANIZATION} "
        f"SENTRY_PROJECT={DEMO_UPLOAD_PROJECT})"
    )
    upload = upload_with_sentry_cli(
        demo.settings, DEMO_ORGANIZATION, DEMO_UPLOAD_PROJECT, demo.topic
    )
    demo.echo(upload.result_line)
    notes = (
        f"gateway: sentry-cli exit={upload.returncode}",
        f"  {upload.result_line}",
        f"gateway: chunks={upload.chunks_accepted} to {demo.topic}, "
        f"bytes accepted={upload.bytes_accepted}, files ok={upload.assembled_ok}",
        "gateway: assemble answers "
        + (" → ".join(f"{state}={n}" for state, n in upload.assemble_answers.items()) or "-"),
    )
    failure = None if upload.ok else "the sentry-cli upload through the gateway failed"
    return DemoFeed(upload.chunks_accepted, notes, failure)


def _summarise(demo: DemoContext, metrics_text: str) -> list[str]:
    blobs = metric_total(metrics_text, "workers_blob_created_total")
    dedup = metric_total(metrics_text, "workers_blob_dedup_hits_total")
    stored = metric_total(metrics_text, "workers_blob_stored_bytes_total")
    return [f"blobs={blobs:.0f} dedup hits={dedup:.0f} bytes stored={stored:.0f}"]


BLOB_INGEST_DEMO: Final = DemoHooks(
    feed=_feed, summarise=_summarise, follow_up=_upload_through_gateway
)

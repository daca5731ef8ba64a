"""`python -m bench.assemble`: the options, the runs, the report (see `__init__`)."""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import psycopg
from confluent_kafka import Producer

from bench import assemble, report
from harness.assemble import (
    AssembleOrg,
    StoredFile,
    artifact_bundle,
    create_org,
    create_task,
    produce_request,
    store_file,
    task_row,
)
from harness.kafka import make_topics, unique_name
from harness.waiting import wait_for
from workers.common.net import free_port
from workers.common.settings import Settings
from workers.common.storage import FilesystemBlobStorage

MIB: Final = 1024 * 1024
TARGET: Final = 0.7
ROOT: Final = Path(__file__).resolve().parents[2]
KIND: Final = "artifact_bundle"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.assemble",
        description=assemble.__doc__.split("\n\n")[0] if assemble.__doc__ else None,
    )
    parser.add_argument("--mib", type=int, default=512, help="size of the file")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each (medians kept)")
    return parser.parse_args(argv)


def ceiling(storage: FilesystemBlobStorage, paths: Sequence[str]) -> float:
    """Seconds to read the chunks at `paths` in order and sha1 them."""
    started = time.perf_counter()
    hasher = hashlib.sha1(usedforsecurity=False)
    for path in paths:
        hasher.update(storage.get(path))
    hasher.hexdigest()
    return time.perf_counter() - started


def chunk_paths(settings: Settings, stored: StoredFile) -> list[str]:
    with psycopg.connect(settings.database_url) as connection:
        rows = connection.execute(
            "SELECT checksum, path FROM blobs WHERE checksum = ANY(%s)", (list(stored.chunks),)
        ).fetchall()
    paths = {str(checksum).strip(): str(path) for checksum, path in rows}
    return [paths[checksum] for checksum in stored.chunks]


class Worker:
    """`workers run assemble` on the benchmark's topic and storage."""

    def __init__(self, topic: str, storage_url: str, scratch: Path, log: Path) -> None:
        self.metrics_port = free_port()
        command = [
            sys.executable, "-m", "workers", "run", "assemble", "--topic", topic,
            "--consumer-group", topic, "--storage-url", storage_url, "--temp-dir", str(scratch),
            "--metrics-port", str(self.metrics_port),
        ]  # fmt: skip
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                env={**os.environ, "WORKERS_LOG_FORMAT": "json"},
            )  # fmt: skip

    def scrape(self) -> str | None:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                text: str = response.read().decode()
        except OSError:
            return None
        return text

    def step_seconds(self) -> dict[str, float]:
        """Seconds spent in each step of the chain so far (`workers_step_latency_seconds`)."""
        from prometheus_client.parser import text_string_to_metric_families

        spent: dict[str, float] = {}
        for family in text_string_to_metric_families(self.scrape() or ""):
            for sample in family.samples:
                if sample.name == "workers_step_latency_seconds_sum":
                    spent[sample.labels["step"]] = sample.value
        return spent

    def skipped(self) -> bool:
        text = self.scrape()
        if text is None:
            return False
        return any(
            line.startswith("workers_assemble_skipped_total{") and not line.endswith(" 0.0")
            for line in text.splitlines()
        )

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(60)


def forget(settings: Settings, org: AssembleOrg) -> None:
    """Delete the organization's assembled files and tasks, so the file is assembled anew."""
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        connection.execute("DELETE FROM assemble_tasks WHERE organization_id = %s", (org.id,))
        connection.execute("DELETE FROM assembled_files WHERE organization_id = %s", (org.id,))


def assemble_once(
    settings: Settings, producer: Producer, topic: str, org: AssembleOrg, stored: StoredFile
) -> float:
    """Seconds from the produced request to the task in `ok`."""
    forget(settings, org)
    task_id = create_task(settings, org, KIND, stored.checksum, stored.chunks, release="1.0")
    # One connection, polled: a connection per poll would fork a PostgreSQL backend every
    # 5 ms and take the CPU the worker needs.
    with psycopg.connect(settings.database_url, autocommit=True) as connection:

        def finished() -> str | None:
            row = connection.execute(
                "SELECT state FROM assemble_tasks WHERE id = %s", (task_id,)
            ).fetchone()
            return row[0] if row is not None and row[0] in ("ok", "error") else None

        started = time.perf_counter()
        produce_request(producer, topic, task_id, org.id, stored.checksum)
        state = wait_for(finished, 300, "the task to finish", interval=0.005)
    elapsed = time.perf_counter() - started
    assert state == "ok", task_row(settings, task_id)
    return elapsed


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = Settings.from_env()
    work = ROOT / ".stack" / "bench" / f"assemble-{uuid.uuid4().hex[:8]}"
    (work / "blobs").mkdir(parents=True)
    (work / "scratch").mkdir()
    storage = FilesystemBlobStorage(work / "blobs")
    topic = unique_name("bench-assemble")
    make_topics(settings, topic, partitions=1)
    org = create_org(settings, "bench-asm")
    print(f"building and storing a {args.mib} MiB artifact bundle...", flush=True)
    bundle = artifact_bundle(org.slug, "1.0", args.mib * MIB, uuid.uuid4())
    stored = store_file(settings, storage, org.id, bundle)
    del bundle
    paths = chunk_paths(settings, stored)
    producer = Producer(settings.kafka_client_config())

    worker = Worker(topic, f"file://{work / 'blobs'}", work / "scratch", work / "worker.log")
    try:
        warm_up = create_task(settings, org, "dif", "0" * 40, (), state="ok")
        produce_request(producer, topic, warm_up, org.id, "0" * 40)
        wait_for(worker.skipped, 120, "the worker to answer its warm-up request")
        # One untimed run of each first: the first file a process reads pays for memory
        # it never held before.
        ceiling(storage, paths)
        assemble_once(settings, producer, topic, org, stored)
        ceilings, assembles = [], []
        before = worker.step_seconds()
        for _ in range(args.repeat):
            # Dirty pages written back before each timed run (as bench.gateway does): none
            # is left by the assemble (a bundle is not written), but other work's could be.
            os.sync()
            ceilings.append(ceiling(storage, paths))
            os.sync()
            assembles.append(assemble_once(settings, producer, topic, org, stored))
        after = worker.step_seconds()
    finally:
        worker.stop()
        storage.close()
        shutil.rmtree(work, ignore_errors=True)

    def rate(seconds: float) -> float:
        return stored.size / seconds / 1e6

    ceiling_s, assemble_s = statistics.median(ceilings), statistics.median(assembles)
    report.print_table(
        ["variant", "seconds (median)", "MB/s", "runs"],
        [
            ["ceiling (read + sha1)", f"{ceiling_s:.3f}", f"{rate(ceiling_s):.0f}", len(ceilings)],
            ["assemble (request → ok)", f"{assemble_s:.3f}", f"{rate(assemble_s):.0f}",
             len(assembles)],
        ],
    )  # fmt: skip
    steps = {step: (after[step] - before.get(step, 0.0)) / args.repeat for step in after}
    print("\nassemble, mean seconds per run in each step:")
    report.print_table(
        ["step", "seconds"], [[step, f"{spent:.3f}"] for step, spent in steps.items()]
    )
    ratio = rate(assemble_s) / rate(ceiling_s)
    verdict = "meets" if ratio >= TARGET else "misses"
    print(f"\nassemble / ceiling = {ratio:.2f} ({verdict} the target >= {TARGET})")
    report.print_figures(
        {
            "bench": "assemble",
            "kind": KIND,
            "file_bytes": stored.size,
            "chunks": len(stored.chunks),
            "ceiling_mb_s": round(rate(ceiling_s), 1),
            "assemble_mb_s": round(rate(assemble_s), 1),
            "ceiling_seconds": [round(s, 4) for s in ceilings],
            "assemble_seconds": [round(s, 4) for s in assembles],
            "step_seconds": {step: round(spent, 4) for step, spent in steps.items()},
            "ratio": round(ratio, 3),
            "target": TARGET,
        }
    )


if __name__ == "__main__":
    main()

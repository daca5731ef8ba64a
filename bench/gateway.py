"""Chunk-upload gateway end to end: 8 concurrent uploaders → real gateway → real Kafka.

Shapes: 64 KiB chunks, 64 per request (4 MiB requests) and 1 MiB chunks, 32 per request (32
MiB requests), both raw random bytes in `file` parts; and 1 MiB chunks of hex text sent
gzip-compressed in `file_gzip` parts (about 2:1), as sentry-cli sends them. For each shape a
fresh `workers serve gateway` subprocess is started on a fresh topic (4 partitions) with a
fresh organization and token, and 8 uploader threads (one `httpx.Client` each, keep-alive)
POST multipart requests as fast as the gateway answers. Every request body is built before the
clock starts (random content, so nothing deduplicates, and the client spends nothing but
sending); the clock runs from the release of the uploaders to the last 200. A 200 means every
chunk of the request was acknowledged by Kafka (`acks=all`, idempotent producer), so the rate
is acknowledged chunks per second. The run is checked afterwards: every answer was 200, the
gateway's `workers_gateway_chunks_accepted_total` equals the chunks sent, and the topic's
high watermarks grew by exactly that many messages. No blob-ingest worker runs (it has its
own bench, `bench.blob_ingest`).

Peak RSS: `VmHWM` of the gateway process (its high-water mark since exec; one gateway per
shape, so one run's peak never includes another's), next to its RSS before the run. MB/s are
10**6 bytes of decompressed chunk data per second; RSS is in MiB. The client and the server
share the machine's 2 cores, so the figures are a floor of what the gateway does on its own.

Prints a table and, as the last line, one JSON object with the figures. The topics and the
organization (with its token) are removed afterwards.
Usage: `python -m bench.gateway [--requests-64k N] [--requests-1m N] [--uploaders 8]`
(needs `workers stack up` and `workers migrate`).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
import psycopg
from confluent_kafka.admin import AdminClient

from bench import report
from harness.gateway import GatewayProcess, multipart_body
from harness.kafka import make_topics, unique_name
from workers.common.kafka_config import admin_configuration
from workers.common.kafka_offsets import high_watermarks, total
from workers.common.projects import create_organization
from workers.common.settings import Settings
from workers.gateway.tokens import create_token

KIB: Final = 1024
MIB: Final = 1024 * 1024
PARTITIONS: Final = 4


@dataclass(frozen=True)
class Shape:
    label: str
    chunk_size: int
    chunks_per_request: int
    requests: int
    #: `file_gzip` parts of hex text (about 2:1), as sentry-cli sends; else raw random bytes.
    gzip: bool = False

    @property
    def chunks(self) -> int:
        return self.chunks_per_request * self.requests


@dataclass(frozen=True)
class Result:
    shape: Shape
    seconds: float
    latencies: list[float]
    accepted_metric: int
    watermark_growth: int
    start_rss_bytes: int
    peak_rss_bytes: int

    @property
    def chunks_per_second(self) -> float:
        return self.shape.chunks / self.seconds

    @property
    def mb_per_second(self) -> float:
        return self.shape.chunks * self.shape.chunk_size / self.seconds / 1e6


def _vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM line")


def _bodies(shape: Shape) -> list[tuple[bytes, str]]:
    bodies = []
    for _ in range(shape.requests):
        parts = []
        for _ in range(shape.chunks_per_request):
            if shape.gzip:
                data = os.urandom(shape.chunk_size // 2).hex().encode()
                value = gzip.compress(data, compresslevel=1, mtime=0)
                parts.append(("file_gzip", hashlib.sha1(data).hexdigest(), value))
            else:
                data = os.urandom(shape.chunk_size)
                parts.append(("file", hashlib.sha1(data).hexdigest(), data))
        bodies.append(multipart_body(parts))
    return bodies


def run(settings: Settings, shape: Shape, uploaders: int) -> Result:
    topic = unique_name("bench-gateway")
    make_topics(settings, topic, partitions=PARTITIONS)
    slug = f"bench-gw-{uuid.uuid4().hex[:10]}"
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        create_organization(connection, slug, None)
        token = create_token(connection, slug, ["project:releases"], name="bench").token
    bodies = _bodies(shape)
    before = total(high_watermarks(settings, topic))
    gateway = GatewayProcess("--topic", topic, log_name=topic)
    try:
        start_rss = gateway.rss_bytes()
        url = f"/api/0/organizations/{slug}/chunk-upload/"
        headers = {"Authorization": f"Bearer {token}"}
        queue = list(range(len(bodies)))
        lock = threading.Lock()
        latencies: list[float] = []
        failures: list[str] = []
        go = threading.Event()

        def uploader() -> None:
            with httpx.Client(base_url=gateway.url, headers=headers, timeout=120) as client:
                go.wait()
                while True:
                    with lock:
                        if not queue:
                            return
                        index = queue.pop()
                    body, content_type = bodies[index]
                    sent = time.perf_counter()
                    response = client.post(
                        url, content=body, headers={"Content-Type": content_type}
                    )
                    elapsed = time.perf_counter() - sent
                    with lock:
                        latencies.append(elapsed)
                        if response.status_code != 200:
                            failures.append(f"{response.status_code} {response.text[:200]}")

        with ThreadPoolExecutor(uploaders) as pool:
            futures = [pool.submit(uploader) for _ in range(uploaders)]
            started = time.perf_counter()
            go.set()
            for future in futures:
                future.result()
            seconds = time.perf_counter() - started
        if failures:
            raise RuntimeError(f"{len(failures)} requests failed, first: {failures[0]}")
        accepted = int(gateway.metric("workers_gateway_chunks_accepted_total"))
        peak = _vm_hwm(gateway.process.pid)
    finally:
        gateway.stop()
    growth = total(high_watermarks(settings, topic)) - before
    if accepted != shape.chunks or growth != shape.chunks:
        raise RuntimeError(
            f"sent {shape.chunks} chunks, gateway accepted {accepted}, topic grew by {growth}"
        )
    _cleanup(settings, topic, slug)
    return Result(shape, seconds, latencies, accepted, growth, start_rss, peak)


def _cleanup(settings: Settings, topic: str, slug: str) -> None:
    admin = AdminClient(admin_configuration(settings))
    for future in admin.delete_topics([topic]).values():
        future.result()
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        connection.execute("DELETE FROM organizations WHERE slug = %s", (slug,))


TABLE_COLUMNS = (
    *("chunks", "per req", "requests", "uploaders", "chunks/s"),
    *("MB/s", "p50 ms", "p99 ms", "RSS MiB", "peak MiB"),
)


def _print_table(results: Sequence[Result], uploaders: int) -> None:
    rows = []
    for r in results:
        ordered = sorted(r.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        rows.append(
            [
                r.shape.label,
                r.shape.chunks_per_request,
                r.shape.requests,
                uploaders,
                f"{r.chunks_per_second:,.0f}",
                f"{r.mb_per_second:.1f}",
                f"{statistics.median(ordered) * 1000:.1f}",
                f"{p99 * 1000:.1f}",
                f"{r.start_rss_bytes / MIB:.1f}",
                f"{r.peak_rss_bytes / MIB:.1f}",
            ]
        )
    report.print_table(TABLE_COLUMNS, rows)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests-64k", type=int, default=64, help="4 MiB requests")
    parser.add_argument("--requests-1m", type=int, default=16, help="32 MiB requests")
    parser.add_argument("--uploaders", type=int, default=8)
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    shapes = [
        Shape("64 KiB", 64 * KIB, 64, args.requests_64k),
        Shape("1 MiB", MIB, 32, args.requests_1m),
        Shape("1 MiB gz", MIB, 32, args.requests_1m, gzip=True),
    ]
    results = []
    for shape in shapes:
        print(f"running {shape.label} x {shape.chunks}...", file=sys.stderr, flush=True)
        results.append(run(settings, shape, args.uploaders))
    _print_table(results, args.uploaders)
    figures = {
        "bench": "gateway",
        "uploaders": args.uploaders,
        "runs": [
            {
                "chunk_bytes": r.shape.chunk_size,
                "gzip": r.shape.gzip,
                "chunks_per_request": r.shape.chunks_per_request,
                "chunks": r.shape.chunks,
                "seconds": round(r.seconds, 3),
                "chunks_per_s": round(r.chunks_per_second, 1),
                "mb_per_s": round(r.mb_per_second, 2),
                "p50_request_ms": round(statistics.median(r.latencies) * 1000, 1),
                "start_rss_mib": round(r.start_rss_bytes / MIB, 1),
                "peak_rss_mib": round(r.peak_rss_bytes / MIB, 1),
            }
            for r in results
        ],
    }
    report.print_figures(figures)


if __name__ == "__main__":
    main()

"""The gateway variant: 8 uploaders → a fresh `workers serve gateway` → Kafka."""

from __future__ import annotations

import contextlib
import http.client
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import psycopg
from confluent_kafka.admin import AdminClient

from bench.gateway.shapes import TimedRun, Workload
from harness.gateway import GatewayProcess
from harness.kafka import make_topics, unique_name
from workers.common.kafka_config import admin_configuration
from workers.common.kafka_offsets import high_watermarks, total
from workers.common.projects import create_organization
from workers.common.settings import Settings
from workers.gateway.tokens import create_token

PARTITIONS: Final = 4
#: Given the gateway's pid, a context that profiles it while the uploads run.
Profiler = Callable[[int], contextlib.AbstractContextManager[None]]


@dataclass(frozen=True)
class Result(TimedRun):
    latencies: list[float]
    accepted_metric: int
    watermark_growth: int
    start_rss_bytes: int
    peak_rss_bytes: int

    @property
    def p50_seconds(self) -> float:
        return statistics.median(self.latencies)

    @property
    def p99_seconds(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def run(
    settings: Settings, work: Workload, uploaders: int, profiler: Profiler | None = None
) -> Result:
    shape, bodies = work.shape, work.bodies
    topic = unique_name("bench-gateway")
    make_topics(settings, topic, partitions=PARTITIONS)
    slug = f"bench-gw-{uuid.uuid4().hex[:10]}"
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        create_organization(connection, slug, None)
        token = create_token(connection, slug, ["project:releases"], name="bench").token
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
            # http.client sends a body with one `sendall` and no copy: a native client
            # (sentry-cli) costs the machine about that, and the gateway shares its 2 cores
            # with the uploaders; httpx copied each 32 MiB body once more in Python.
            address = urlsplit(gateway.url)
            connection = http.client.HTTPConnection(
                address.hostname or "127.0.0.1", address.port, timeout=120
            )
            try:
                go.wait()
                while True:
                    with lock:
                        if not queue:
                            return
                        index = queue.pop()
                    body, content_type = bodies[index]
                    sent = time.perf_counter()
                    connection.request(
                        "POST", url, body=body, headers={**headers, "Content-Type": content_type}
                    )
                    response = connection.getresponse()
                    answer = response.read()
                    elapsed = time.perf_counter() - sent
                    with lock:
                        latencies.append(elapsed)
                        if response.status != 200:
                            failures.append(f"{response.status} {answer[:200]!r}")
            finally:
                connection.close()

        profiling = profiler(gateway.process.pid) if profiler else contextlib.nullcontext()
        with profiling, ThreadPoolExecutor(uploaders) as pool:
            futures = [pool.submit(uploader) for _ in range(uploaders)]
            started = time.perf_counter()
            go.set()
            for future in futures:
                future.result()
            seconds = time.perf_counter() - started
        if failures:
            raise RuntimeError(f"{len(failures)} requests failed, first: {failures[0]}")
        accepted = int(gateway.metric("workers_gateway_chunks_accepted_total"))
        peak = gateway.peak_rss_bytes()
    finally:
        gateway.stop()
    growth = total(high_watermarks(settings, topic)) - before
    if accepted != shape.chunks or growth != shape.chunks:
        raise RuntimeError(
            f"sent {shape.chunks} chunks, gateway accepted {accepted}, topic grew by {growth}"
        )
    delete_topic(settings, topic)
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        connection.execute("DELETE FROM organizations WHERE slug = %s", (slug,))
    return Result(shape, seconds, latencies, accepted, growth, start_rss, peak)


def delete_topic(settings: Settings, topic: str) -> None:
    admin = AdminClient(admin_configuration(settings))
    for future in admin.delete_topics([topic]).values():
        future.result()

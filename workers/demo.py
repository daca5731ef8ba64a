"""The fleet's main job (`workers demo`), what the README's first command runs.

Brings the local stack up, migrates, creates topics, starts every registered worker as a
real `workers run` process, feeds each its sample traffic (a few messages deliberately
malformed), waits until every worker has committed everything, and prints a summary.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from arroyo.backends.kafka import KafkaPayload
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from workers.billing.summary import flagged_projects, outcome_totals
from workers.billing.traffic import sample_traffic_for_projects
from workers.common.database import apply_migrations
from workers.common.kafka_config import producer_configuration
from workers.common.kafka_offsets import (
    committed_offsets,
    count_committed_records,
    high_watermarks,
    total,
)
from workers.common.logs import configure_logging
from workers.common.net import free_port
from workers.common.producing import produce_waiting
from workers.common.projects import (
    Organization,
    Project,
    ProjectStoreError,
    create_organization,
    create_project,
    find_organization,
    list_projects,
)
from workers.common.projects.cli import PROJECT_SNOWFLAKE_KEY
from workers.common.registry import ConsumerDefinition, load_registry
from workers.common.settings import Settings
from workers.common.snowflake import SentrySnowflakeGenerator
from workers.common.topics import create_topics, fleet_topics
from workers.gateway.demo_upload import GatewayUpload, upload_with_sentry_cli
from workers.stack import StackError, stack_up

WORKER_STOP_TIMEOUT_SECONDS = 60.0
POLL_INTERVAL_SECONDS = 0.25
SAMPLE_SEED = 42
DEMO_ORGANIZATION = "demo"
BLOB_INGEST_NAME = "blob-ingest"
BILLING_NAME = "billing"
DEMO_PROJECTS = ("frontend", "backend", "mobile")
# Only these send custom metrics, so exactly these get the first-custom-metric flag.
DEMO_CUSTOM_PROJECTS = ("backend",)
# The project sentry-cli uploads the demo's debug file to, through the gateway.
DEMO_UPLOAD_PROJECT = "backend"
METRICS_SETTLE_SECONDS = 10.0


@dataclass
class DemoWorker:
    definition: ConsumerDefinition
    process: subprocess.Popen[bytes]
    metrics_port: int
    log_path: Path
    committed_before: int
    dlq_before: dict[int, int]
    outputs_before: dict[str, dict[int, int]]
    produced: int = 0


def _start_worker(
    definition: ConsumerDefinition, settings: Settings, registry_loader: str
) -> DemoWorker:
    port = free_port()
    logs = settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"demo-{definition.name}.log"
    command = [
        sys.executable,
        "-m",
        "workers.registry_cli",
        registry_loader,
        "run",
        definition.name,
        "--metrics-port",
        str(port),
        "--healthcheck-file",
        str(settings.state_dir / f"{definition.name}.healthcheck"),
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "WORKERS_LOG_FORMAT": "json"},
        )
    return DemoWorker(
        definition=definition,
        process=process,
        metrics_port=port,
        log_path=log_path,
        committed_before=total(
            committed_offsets(settings, definition.consumer_group, definition.topic)
        ),
        dlq_before=high_watermarks(settings, definition.dlq_topic) if definition.dlq_topic else {},
        outputs_before={
            topic: high_watermarks(settings, topic) for topic in definition.output_topics
        },
    )


def _demo_organization(settings: Settings) -> Organization:
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        try:
            return find_organization(connection, DEMO_ORGANIZATION)
        except ProjectStoreError:
            return create_organization(connection, DEMO_ORGANIZATION, "Demo organization")


def _demo_projects(settings: Settings) -> list[Project]:
    """The demo organization's projects (created once), for billing traffic."""
    organization = _demo_organization(settings)
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        existing = {p.slug: p for p in list_projects(connection, organization.slug)}
        missing = [slug for slug in DEMO_PROJECTS if slug not in existing]
        if missing:
            redis = Redis.from_url(settings.redis_url)
            try:
                generator = SentrySnowflakeGenerator(
                    redis, key=PROJECT_SNOWFLAKE_KEY, region=settings.snowflake_region
                )
                for slug in missing:
                    existing[slug] = create_project(
                        connection, redis, generator.generate, organization.slug, slug, "python"
                    )
            finally:
                redis.close()
    return [existing[slug] for slug in DEMO_PROJECTS]


def _sample_messages(settings: Settings, worker: DemoWorker, count: int) -> Sequence[KafkaPayload]:
    if worker.definition.name == BILLING_NAME:
        projects = _demo_projects(settings)
        pairs = [(p.organization_id, p.id) for p in projects]
        custom = [(p.organization_id, p.id) for p in projects if p.slug in DEMO_CUSTOM_PROJECTS]
        return sample_traffic_for_projects(count, SAMPLE_SEED, pairs, custom_projects=custom)
    assert worker.definition.sample_traffic is not None
    return worker.definition.sample_traffic(count, SAMPLE_SEED)


def _produce_sample_traffic(
    settings: Settings, workers: list[DemoWorker], count: int, progress: Progress
) -> None:
    producer = Producer(producer_configuration(settings, client_id="workers-demo"))
    for worker in workers:
        if worker.definition.sample_traffic is None:
            continue
        messages = _sample_messages(settings, worker, count)
        task = progress.add_task(f"produce → {worker.definition.topic}", total=len(messages))
        errors: list[str] = []

        def delivered(
            error: object, _message: object, task: TaskID = task, errors: list[str] = errors
        ) -> None:
            if error is not None:
                errors.append(str(error))
            progress.advance(task)

        for message in messages:
            produce_waiting(
                producer,
                worker.definition.topic,
                value=message.value,
                key=message.key,
                headers=list(message.headers),
                on_delivery=delivered,
            )
        remaining = producer.flush(60.0)
        if remaining or errors:
            raise RuntimeError(
                f"{worker.definition.topic}: {remaining} undelivered, {len(errors)} failed"
                + (f" (first: {errors[0]})" if errors else "")
            )
        worker.produced = len(messages)


def _sample_files(directory: Path) -> list[Path]:
    """Three files, the same on every run: 20 MiB of random bytes, an exact copy of it (every
    chunk a dedup hit) and 3 MiB of text."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SAMPLE_SEED)
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


def _upload_sample_files(settings: Settings, worker: DemoWorker, console: Console) -> None:
    """The real `workers chunks produce`, as a user would run it."""
    _demo_organization(settings)
    files = _sample_files(settings.state_dir / "demo-files")
    command = [
        sys.executable, "-m", "workers", "chunks", "produce", *map(str, files),
        "--org", DEMO_ORGANIZATION, "--gzip", "--topic", worker.definition.topic,
    ]  # fmt: skip
    console.print(f"$ workers chunks produce {' '.join(f.name for f in files)} --org demo --gzip")
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    console.print(result.stdout.strip())
    match = re.search(r"chunks=(\d+)", result.stdout)
    if result.returncode != 0 or match is None:
        raise RuntimeError("workers chunks produce failed")
    worker.produced = int(match.group(1))


def _upload_through_gateway(
    settings: Settings, worker: DemoWorker, console: Console
) -> GatewayUpload:
    """The real sentry-cli uploads a debug file through a gateway subprocess; blob-ingest
    (running) persists its chunks, and `--wait` returns once the file is assembled."""
    _demo_projects(settings)
    console.print(
        "$ sentry-cli debug-files upload --wait demo-debug   (SENTRY_URL=<gateway> "
        f"SENTRY_ORG={DEMO_ORGANIZATION} SENTRY_PROJECT={DEMO_UPLOAD_PROJECT})"
    )
    upload = upload_with_sentry_cli(
        settings, DEMO_ORGANIZATION, DEMO_UPLOAD_PROJECT, worker.definition.topic
    )
    console.print(upload.result_line)
    worker.produced += upload.chunks_accepted
    return upload


def _gateway_row(upload: GatewayUpload, topic: str) -> tuple[str, ...]:
    return (
        "gateway",
        str(upload.chunks_accepted),
        "-",
        "-",
        f"{topic}: {upload.chunks_accepted}",
        f"sentry-cli exit={upload.returncode}: {upload.result_line}; "
        f"bytes accepted={upload.bytes_accepted} files ok={upload.assembled_ok}",
    )


def _metric_total(metrics_text: str, name: str, **labels: str) -> float:
    found = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found += sample.value
    return found


def _billing_details(settings: Settings, metrics_text: str) -> str:
    totals = outcome_totals(metrics_text)
    parts = [f"{t.category}: {t.outcomes} outcomes, quantity {t.quantity}" for t in totals.values()]
    organization = _demo_organization(settings)
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        flagged = flagged_projects(connection, organization_id=organization.id)
    parts.append("flagged: " + (", ".join(sorted(p.slug for p in flagged)) or "-"))
    return "; ".join(parts)


def _details(settings: Settings, name: str, metrics_text: str) -> str:
    if name == BILLING_NAME:
        return _billing_details(settings, metrics_text)
    if name == BLOB_INGEST_NAME:
        blobs = _metric_total(metrics_text, "workers_blob_created_total")
        dedup = _metric_total(metrics_text, "workers_blob_dedup_hits_total")
        stored = _metric_total(metrics_text, "workers_blob_stored_bytes_total")
        return f"blobs={blobs:.0f} dedup hits={dedup:.0f} bytes stored={stored:.0f}"
    steps = {
        line.split('step="', 1)[1].split('"', 1)[0]
        for line in metrics_text.splitlines()
        if line.startswith("workers_step_messages_in_total{")
    }
    return "steps: " + ", ".join(sorted(steps)) if steps else "-"


def _wait_for_commits(
    settings: Settings, workers: list[DemoWorker], timeout: float, progress: Progress
) -> bool:
    tasks = {
        worker.definition.name: progress.add_task(
            f"{worker.definition.name} processed", total=worker.produced
        )
        for worker in workers
    }
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = True
        for worker in workers:
            if worker.process.poll() is not None:
                raise RuntimeError(
                    f"worker {worker.definition.name} exited with {worker.process.returncode}; "
                    f"see {worker.log_path}"
                )
            committed = total(
                committed_offsets(
                    settings, worker.definition.consumer_group, worker.definition.topic
                )
            )
            progress.update(
                tasks[worker.definition.name], completed=committed - worker.committed_before
            )
            done = done and committed - worker.committed_before >= worker.produced
        if done:
            return True
        time.sleep(POLL_INTERVAL_SECONDS)
    return False


def _stop(workers: list[DemoWorker]) -> None:
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    for worker in workers:
        try:
            worker.process.wait(WORKER_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()


def _scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


def _settled_scrape(settings: Settings, worker: DemoWorker) -> str:
    """The worker's metrics once its per-second tallies caught up with what it committed
    (billing flushes counts about once a second): every outcome on the topic is counted."""
    deadline = time.monotonic() + METRICS_SETTLE_SECONDS
    while True:
        text = _scrape(worker.metrics_port)
        if worker.definition.name != BILLING_NAME or time.monotonic() > deadline:
            return text
        produced = sum(
            count_committed_records(settings, topic, before)
            for topic, before in worker.outputs_before.items()
        )
        if sum(t.outcomes for t in outcome_totals(text).values()) >= produced:
            return text
        time.sleep(POLL_INTERVAL_SECONDS)


def _summary(
    settings: Settings,
    workers: list[DemoWorker],
    metrics: dict[str, str],
    gateway: tuple[str, ...] | None = None,
) -> Table:
    table = Table(title="workers demo")
    for column in ("worker", "produced", "processed", "DLQ", "output", "details"):
        table.add_column(column, overflow="fold")
    for worker in workers:
        definition = worker.definition
        processed = (
            total(committed_offsets(settings, definition.consumer_group, definition.topic))
            - worker.committed_before
        )
        # Read committed: billing writes its outputs in Kafka transactions.
        dlq = (
            count_committed_records(settings, definition.dlq_topic, worker.dlq_before)
            if definition.dlq_topic
            else 0
        )
        outputs = ", ".join(
            f"{topic}: {count_committed_records(settings, topic, before)}"
            for topic, before in worker.outputs_before.items()
        )
        table.add_row(
            definition.name,
            str(worker.produced),
            str(processed),
            str(dlq),
            outputs or "-",
            _details(settings, definition.name, metrics.get(definition.name, "")),
        )
    if gateway is not None:
        table.add_row(*gateway)
    return table


def run_demo(registry_loader: str, messages: int, timeout: float) -> int:
    settings = Settings.from_env()
    configure_logging("WARNING", "console")
    console = Console()
    try:
        stack_up(settings, console.print)
    except StackError as error:
        console.print(f"[red]stack: {error}[/red]")
        return 1
    for migration in apply_migrations(settings.database_url):
        console.print(f"migration applied: {migration.version:04d}_{migration.name}")
    registry = load_registry(registry_loader)
    create_topics(settings, fleet_topics(registry, settings.topic_partitions))

    definitions = [
        d for d in registry if d.sample_traffic is not None or d.name == BLOB_INGEST_NAME
    ]
    workers = [_start_worker(d, settings, registry_loader) for d in definitions]
    metrics: dict[str, str] = {}
    gateway: GatewayUpload | None = None
    blob_worker = next((w for w in workers if w.definition.name == BLOB_INGEST_NAME), None)
    try:
        if blob_worker is not None:
            _upload_sample_files(settings, blob_worker, console)
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console) as progress:
            _produce_sample_traffic(settings, workers, messages, progress)
            finished = _wait_for_commits(settings, workers, timeout, progress)
        if finished and blob_worker is not None:
            gateway = _upload_through_gateway(settings, blob_worker, console)
            with Progress(*columns, console=console) as progress:
                finished = _wait_for_commits(settings, [blob_worker], timeout, progress)
        if not finished:
            console.print(f"[red]workers did not finish within {timeout:.0f} s[/red]")
        for worker in workers:
            metrics[worker.definition.name] = _settled_scrape(settings, worker)
    finally:
        _stop(workers)
    gateway_row = (
        _gateway_row(gateway, blob_worker.definition.topic)
        if gateway is not None and blob_worker is not None
        else None
    )
    console.print(_summary(settings, workers, metrics, gateway_row))
    for worker in workers:
        name = worker.definition.name
        console.print(
            f"{name}: /metrics was served on http://127.0.0.1:{worker.metrics_port}/metrics "
            f"while it ran (see it live: workers run {name} --metrics-port 9101, then "
            f"curl http://127.0.0.1:9101/metrics); log: {worker.log_path}"
        )
    if gateway is not None:
        console.print(f"gateway: log {gateway.log_path}; debug file {gateway.debug_file}")
    failed = [w.definition.name for w in workers if w.process.returncode != 0]
    if failed:
        console.print(f"[red]workers exited uncleanly: {', '.join(failed)}[/red]")
        return 1
    if gateway is not None and not gateway.ok:
        console.print("[red]the sentry-cli upload through the gateway failed[/red]")
        return 1
    return 0 if finished else 1

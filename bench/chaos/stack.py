"""The chaos suite's own stack: Kafka, PostgreSQL and Redis on free ports, in a temporary
state directory, never the shared one (`workers stack up` on the default ports).

`isolated_stack` starts it with `workers.stack.stack_up` (a `Settings` whose ports were
picked free and whose `state_dir` is a fresh temporary directory), runs `workers migrate` and
`workers topics create` against it as subprocesses (as an operator would), yields a
`ChaosStack` and, whatever happened, stops every service and removes the directory (kept
with `keep=True`, e.g. to read the logs of a failed run).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.ports import free_port_block
from harness.worker_process import ROOT
from workers.common.local_kafka import local_bootstrap_servers
from workers.common.settings import Settings
from workers.common.topics import DEFAULT_TOPIC_CONFIG, TopicSpec, create_topics
from workers.stack import stack_down, stack_up
from workers.stack.kafka_cluster import KafkaCluster
from workers.stack.paths import StackPaths
from workers.stack.service import LOCALHOST

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChaosStack:
    """The stack a chaos run works against: its settings, the environment its subprocesses
    get (the same URLs), and its directories."""

    settings: Settings
    env: Mapping[str, str]
    root: Path
    brokers: int

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def scratch(self) -> Path:
        """Blob storage and temporary files of the workers under test."""
        return self.root / "scratch"

    def up(self) -> None:
        """Start whatever of the stack is not running (after a fault) and wait for it."""
        stack_up(self.settings, lambda _line: None)


def stack_settings(root: Path, brokers: int) -> Settings:
    """Settings for a stack in `root` on free ports; nothing in them is "external".

    Kafka takes a block of `2 * brokers` ports (each broker and its controller,
    `workers.common.local_kafka`), PostgreSQL and Redis the two after it.
    """
    base = free_port_block(2 * brokers + 2)
    postgres, redis = base + 2 * brokers, base + 2 * brokers + 1
    return Settings(
        kafka_bootstrap_servers=local_bootstrap_servers(base, brokers),
        database_url=f"postgresql://workers@{LOCALHOST}:{postgres}/workers",
        redis_url=f"redis://{LOCALHOST}:{redis}/0",
        state_dir=root,
        log_level="WARNING",
        blob_storage_url=f"file://{root / 'scratch' / 'blobs'}",
    )


def subprocess_env(settings: Settings) -> dict[str, str]:
    """What a `workers` subprocess needs to use this stack and nothing else."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "WORKERS_STATE_DIR": str(settings.state_dir),
        "BLOB_STORAGE_URL": settings.blob_storage_url or "",
        "WORKERS_LOG_LEVEL": "INFO",
    }


def seed_kafka_jars(root: Path, libs: Path | None) -> None:
    """Link the jars of an existing stack (`libs`, with Maven's `.resolved` marker) into
    `root`, so the first `stack_up` does not download them again; without them it does."""
    if libs is None or not (libs / ".resolved").is_file():
        return
    target = StackPaths.under(root).kafka / "libs"
    target.mkdir(parents=True)
    for jar in libs.glob("*.jar"):
        (target / jar.name).symlink_to(jar.resolve())
    shutil.copy(libs / ".resolved", target / ".resolved")


def default_kafka_libs() -> Path | None:
    """The jars of this checkout's own stack (or `WORKERS_STATE_DIR`'s), if downloaded."""
    for state in (Settings.from_env().state_dir, ROOT / ".stack"):
        libs = state / "kafka" / "libs"
        if (libs / ".resolved").is_file():
            return libs
    return None


def run_workers_command(env: Mapping[str, str], *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "workers", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
        timeout=300,
        stdout=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def isolated_stack(
    brokers: int, kafka_libs: Path | None, keep: bool = False, echo: bool = False
) -> Iterator[ChaosStack]:
    root = Path(tempfile.mkdtemp(prefix="chaos-stack-"))
    settings = stack_settings(root, brokers)

    def say(line: str) -> None:
        if echo:
            print(f"stack: {line}", file=sys.stderr)

    try:
        seed_kafka_jars(root, kafka_libs)
        stack_up(settings, say, brokers=brokers)
        env = subprocess_env(settings)
        run_workers_command(env, "migrate")
        run_workers_command(env, "topics", "create")
        stack = ChaosStack(settings, env, root, brokers)
        stack.scratch.mkdir()
        yield stack
    finally:
        try:
            _stop_everything(settings, say)
        finally:
            if keep:
                print(f"chaos stack state kept in {root}", file=sys.stderr)
            else:
                shutil.rmtree(root, ignore_errors=True)


def _stop_everything(settings: Settings, say: Callable[[str], None]) -> None:
    """`workers stack down`, after resuming a broker a failed fault left paused; then
    SIGKILL for any broker still there."""
    cluster = KafkaCluster(settings)
    for broker in cluster.brokers():
        if broker.state == "paused" and broker.pid is not None:
            os.kill(broker.pid, signal.SIGCONT)
    try:
        stack_down(settings, say)
    finally:
        for broker in cluster.brokers():
            if broker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(broker.pid, signal.SIGKILL)


def create_stream_topics(stack: ChaosStack, *names: str, partitions: int = 4) -> None:
    """Topics of one scenario, replicated as the fleet's (by the cluster's size)."""
    create_topics(stack.settings, [TopicSpec(n, partitions, DEFAULT_TOPIC_CONFIG) for n in names])

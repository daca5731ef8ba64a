"""The fleet's workers and the echo worker, each writing invalid input to the DLQ topic named
by `WORKERS_TEST_DLQ_TOPIC` (so a test owns its DLQ), and the `workers` CLI over them run as
a subprocess, exactly as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, replace
from typing import Final

from harness.worker_process import ROOT
from tests.support import echo_worker
from workers.common.registry import ConsumerRegistry
from workers.fleet import build_registry as build_fleet_registry

DLQ_TOPIC_ENV: Final = "WORKERS_TEST_DLQ_TOPIC"
LOADER: Final = "tests.support.dlq_registry:build_registry"


def build_registry() -> ConsumerRegistry:
    topic = os.environ.get(DLQ_TOPIC_ENV)
    definitions = [*build_fleet_registry(), echo_worker.build_definition()]
    return ConsumerRegistry(
        [replace(definition, dlq_topic=topic or definition.dlq_topic) for definition in definitions]
    )


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def run_cli(*args: str, user: str = "dlq-test-operator", timeout: float = 120.0) -> CliResult:
    """`workers ARGS...` over `LOADER` in a subprocess (the environment's DLQ topic, $USER)."""
    done = subprocess.run(
        [sys.executable, "-m", "workers.registry_cli", LOADER, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "USER": user, "WORKERS_LOG_FORMAT": "json"},
        check=False,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)

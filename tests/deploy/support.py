"""Helpers of the deploy tests: the Procfile, `workers run` argument parsing, kustomize."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from unittest import mock

import yaml
from click.testing import CliRunner

from workers.cli import make_cli
from workers.common import run_cli
from workers.common.runner import RunOptions
from workers.fleet import FLEET_REGISTRY_LOADER, build_registry

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = {"base": KUBERNETES / "base", "example": KUBERNETES / "overlays" / "example"}

Manifest = dict[str, Any]


def procfile() -> dict[str, list[str]]:
    """Process type → argv, in file order."""
    processes: dict[str, list[str]] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            processes[name.strip()] = shlex.split(command)
    return processes


#: How the Procfile starts the chunk-upload gateway (its `web` process).
GATEWAY_COMMAND: Final = ["workers", "serve", "gateway"]


def gateway_process() -> tuple[str, list[str]]:
    """(process type, argv) of the Procfile's one gateway process."""
    found = [(name, argv) for name, argv in procfile().items() if argv[:3] == GATEWAY_COMMAND]
    assert len(found) == 1, "the Procfile runs the gateway exactly once"
    return found[0]


@dataclass(frozen=True)
class ConsumerCommand:
    """A `workers run NAME ...` command line, parsed exactly as the CLI parses it."""

    name: str
    options: RunOptions


def is_consumer_command(argv: list[str]) -> bool:
    return argv[:2] == ["workers", "run"] and len(argv) > 2 and argv[2] in build_registry().names()


def parse_consumer_command(argv: list[str]) -> ConsumerCommand:
    """Run the real `workers run` CLI on `argv` with the consumer itself replaced by a stub."""
    assert is_consumer_command(argv), argv
    started: list[ConsumerCommand] = []

    def fake_run_worker_process(
        definition: Any, options: RunOptions, *args: Any, **kw: Any
    ) -> None:
        started.append(ConsumerCommand(definition.name, options))

    class FakeSupervisor:
        def __init__(self, loader: str, name: str, options: RunOptions, *args: Any) -> None:
            started.append(ConsumerCommand(name, options))

        def run(self) -> int:
            return 0

    with (
        mock.patch.object(run_cli, "run_worker_process", fake_run_worker_process),
        mock.patch.object(run_cli, "Supervisor", FakeSupervisor),
    ):
        result = CliRunner().invoke(make_cli(FLEET_REGISTRY_LOADER), argv[1:])
    assert result.exit_code == 0, result.output
    assert len(started) == 1
    return started[0]


def cli_accepts(argv: list[str]) -> bool:
    """Whether `workers ...argv` names a real (sub)command with valid options (via --help)."""
    assert argv[0] == "workers", argv
    result = CliRunner().invoke(make_cli(FLEET_REGISTRY_LOADER), [*argv[1:], "--help"])
    return result.exit_code == 0 and f"Usage: cli {argv[1]}" in result.output


def kustomize_build(kustomize: Path, directory: Path) -> list[Manifest]:
    result = subprocess.run(
        [str(kustomize), "build", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]


def one(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = find(manifests, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A label selector (`matchLabels` and `In`/`NotIn` `matchExpressions`) matches `labels`."""
    assert set(selector) <= {"matchLabels", "matchExpressions"}, selector
    match = selector.get("matchLabels", {})
    expressions = selector.get("matchExpressions", [])
    if not match and not expressions:
        return False
    if not all(labels.get(key) == value for key, value in match.items()):
        return False
    for expression in expressions:
        operator = expression["operator"]
        assert operator in ("In", "NotIn"), expression
        inside = labels.get(expression["key"]) in expression["values"]
        if inside != (operator == "In"):
            return False
    return True

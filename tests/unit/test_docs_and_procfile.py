"""The configuration table (docs/operations.md), the README's first commands and the Procfile
stay true to the code."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from workers.cli import make_cli
from workers.common import run_cli
from workers.common.runner import RunOptions
from workers.common.settings import ENVIRONMENT_VARIABLES
from workers.fleet import FLEET_REGISTRY_LOADER, build_registry
from workers.gateway import cli as gateway_cli

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_table_lists_every_variable_with_its_default() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    for variable in ENVIRONMENT_VARIABLES:
        row = f"| `{variable.name}` | `{variable.default}` | {variable.meaning} |"
        assert row in operations, f"configuration table is missing or stale: {variable.name}"


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    assert [line.split("#")[0].strip() for line in first_block] == [
        "./dev.sh demo",
        "./dev.sh test",
    ]
    assert "./dev.sh test" in (ROOT / ".ci" / "run").read_text()


def _procfile() -> dict[str, list[str]]:
    processes = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip():
            name, _, command = line.partition(":")
            processes[name.strip()] = shlex.split(command)
    return processes


def test_procfile_web_process_serves_the_gateway_with_valid_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: list[tuple[Any, ...]] = []

    def fake_run_gateway(*args: Any) -> None:
        served.append(args)

    monkeypatch.setattr(gateway_cli, "run_gateway", fake_run_gateway)
    argv = _procfile()["web"]
    assert argv[:3] == ["workers", "serve", "gateway"]
    result = CliRunner().invoke(make_cli(FLEET_REGISTRY_LOADER), argv[1:])
    assert result.exit_code == 0, result.output
    (_settings, _config, host, port, metrics_port, _connections) = served[0]
    assert (host, port, metrics_port) == ("0.0.0.0", 8000, 9103)
    other_ports = {
        int(argv[argv.index("--metrics-port") + 1])
        for name, argv in _procfile().items()
        if name != "web"
    }
    assert metrics_port not in other_ports


def test_procfile_runs_every_registered_worker_with_valid_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[tuple[str, RunOptions]] = []

    def fake_run_worker_process(
        definition: Any, options: RunOptions, *args: Any, **kw: Any
    ) -> None:
        started.append((definition.name, options))

    monkeypatch.setattr(run_cli, "run_worker_process", fake_run_worker_process)
    processes = _procfile()
    processes.pop("web")
    assert set(processes) == set(build_registry().names())
    for name, argv in processes.items():
        assert argv[:3] == ["workers", "run", name]
        result = CliRunner().invoke(make_cli(FLEET_REGISTRY_LOADER), argv[1:])
        assert result.exit_code == 0, result.output
    assert [name for name, _ in started] == list(processes)
    assert all(options.healthcheck_file is not None for _, options in started)
    assert all(options.metrics_port is not None for _, options in started)

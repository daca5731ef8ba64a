"""The Procfile as honcho reads it, and the Dockerfile's production properties."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from honcho.environ import parse_procfile  # type: ignore[import-untyped]

from tests.deploy.support import ROOT, procfile

DOCKERFILE = ROOT / "Dockerfile"
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|cc|make|build-essential|python3-dev|libc6-dev)\b")


def _honcho() -> Path:
    return Path(sys.executable).with_name("honcho")


def test_honcho_reads_the_same_processes_as_the_fleet() -> None:
    parsed = parse_procfile((ROOT / "Procfile").read_text())
    honcho_view = {name: shlex.split(command) for name, command in parsed.processes.items()}
    assert honcho_view == procfile()


def test_honcho_check_accepts_the_procfile() -> None:
    result = subprocess.run(
        [str(_honcho()), "check"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert f"Valid procfile detected ({', '.join(procfile())})" in result.stderr + result.stdout


def test_docs_tell_how_to_run_the_procfile_locally() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert "honcho start" in operations
    assert "honcho" in (ROOT / "pyproject.toml").read_text()


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split into stages."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [str(hadolint), "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_multi_stage_and_the_final_stage_only_copies_the_built_environment() -> None:
    stages = _stages()
    assert len(stages) >= 2
    final = stages[-1]
    assert final[0].split()[1] == stages[0][0].split()[1], "same base image for the venv"
    assert any(line.startswith("COPY --from=build /opt/venv /opt/venv") for line in final)
    runs = " ".join(line for line in final if line.startswith("RUN "))
    assert "pip " not in runs, "nothing is installed in the final stage"
    assert "apt-get" not in runs, "nothing is installed in the final stage"
    assert not BUILD_TOOLS.search(" ".join(final)), "no build tools in the final stage"


def test_image_runs_as_a_numeric_non_root_user() -> None:
    final = _stages()[-1]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users, "the final stage sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit()
    assert int(uid) > 0
    assert gid == "" or (gid.isdigit() and int(gid) > 0)
    assert any(f"--uid {uid}" in line for line in final if line.startswith("RUN "))


def test_image_writes_only_under_tmp() -> None:
    final = " ".join(_stages()[-1])
    environment = dict(re.findall(r"\b([A-Z_]+)=(\S+)", final))
    assert environment["PYTHONDONTWRITEBYTECODE"] == "1"
    assert environment["WORKERS_STATE_DIR"].startswith("/tmp/")
    assert environment["HOME"] == "/tmp"
    assert environment.get("PROMETHEUS_MULTIPROC_DIR", "/tmp/").startswith("/tmp/")
    # The build stage byte-compiles, since a read-only root filesystem cannot cache .pyc.
    assert any("compileall" in line for line in _stages()[0])


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".stack", "tests", "bench"} <= ignored
    copied = [line.split()[1] for line in _stages()[0] if line.startswith("COPY ")]
    for path in copied:
        assert path not in ignored

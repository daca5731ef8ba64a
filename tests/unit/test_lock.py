"""pyproject.toml's ranges keep out the versions with published advisories, constraints.txt
(the lock) pins every one of them inside its range, and every install uses the lock
(docs/operations.md, Dependencies and the lock)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Final

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT: Final = Path(__file__).resolve().parents[2]
LOCK: Final = ROOT / "constraints.txt"
PYPROJECT: Final[dict[str, Any]] = tomllib.loads((ROOT / "pyproject.toml").read_text())

#: The last version each advisory affects: the range must exclude it.
ADVISORIES: Final = {
    # GHSA-82w8-qh3p-5jfq (form limits ignored for urlencoded bodies, fixed in 1.3.1),
    # GHSA-jp82-jpqv-5vv3, GHSA-86qp-5c8j-p5mr (Host header, 1.0.1), GHSA-7f5h-v6xp-fcq8.
    "starlette": "1.3.0",
    # GHSA-vqfr-h8mv-ghfj: request smuggling through lenient chunked bodies (fixed in 0.16.0).
    "h11": "0.15.0",
    # GHSA-v9pg-7xvm-68hf (fixed in 0.0.31), GHSA-5rvq-cxj2-64vf, GHSA-6jv3-5f52-599m and
    # GHSA-vffw-93wf-4j4q (0.0.30), GHSA-pp6c-gr5w-3c5g (0.0.27), GHSA-mj87-hwqh-73pj (0.0.26).
    "python-multipart": "0.0.30",
}


def _requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    texts = [
        *project["dependencies"],
        *(text for extra in project["optional-dependencies"].values() for text in extra),
        *PYPROJECT["build-system"]["requires"],
    ]
    return [Requirement(text) for text in texts]


def _runtime(name: str) -> Requirement:
    (requirement,) = (
        Requirement(text)
        for text in PYPROJECT["project"]["dependencies"]
        if canonicalize_name(Requirement(text).name) == name
    )
    return requirement


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in LOCK.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-z0-9]+(?:-[a-z0-9]+)*)==(\S+)", line)
        assert match, f"constraints.txt: not `name==version`: {line!r}"
        name, version = match.groups()
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = Version(version)
    return pins


def test_the_lock_is_sorted_canonical_exact_pins() -> None:
    pins = _pins()
    assert list(pins) == sorted(pins)
    assert {"pip", "setuptools", "wheel"} <= set(pins), "pip and the build backend are pinned"
    assert LOCK.read_text().startswith("# "), "the lock says how it is made"
    assert "./dev.sh lock" in LOCK.read_text().split("\n\n", 1)[0]


@pytest.mark.parametrize("requirement", _requirements(), ids=str)
def test_every_declared_requirement_is_pinned_inside_its_range(requirement: Requirement) -> None:
    pins = _pins()
    name = canonicalize_name(requirement.name)
    assert name in pins, f"{name} is not in constraints.txt: run ./dev.sh lock"
    assert requirement.specifier.contains(pins[name], prereleases=True), (
        f"constraints.txt pins {name}=={pins[name]}, outside {requirement}: run ./dev.sh lock"
    )


@pytest.mark.parametrize(("name", "last_affected"), ADVISORIES.items())
def test_the_ranges_exclude_the_versions_with_advisories(name: str, last_affected: str) -> None:
    requirement = _runtime(name)
    assert not requirement.specifier.contains(last_affected, prereleases=True), requirement
    assert _pins()[name] > Version(last_affected)


def test_h11_is_a_direct_dependency_since_uvicorn_accepts_any() -> None:
    assert _runtime("uvicorn")
    assert _runtime("h11").specifier.contains("0.16.0")


def test_zstandard_is_a_runtime_dependency_with_read_across_frames() -> None:
    specifier = _runtime("zstandard").specifier
    assert not specifier.contains("0.21.0"), "decompressobj(read_across_frames=) is 0.22"
    assert specifier.contains(str(_pins()["zstandard"]))


# ---- every install uses the lock ---------------------------------------------------------


def _dockerfile_build_runs() -> list[str]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    build = text.split("\nFROM ", 2)[1]  # the first stage, up to the next FROM
    return [line.strip() for line in build.splitlines() if line.strip().startswith("RUN ")]


def test_the_image_installs_everything_with_the_lock() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^COPY [^\n]*\bconstraints\.txt\b", dockerfile, re.MULTILINE)
    installs = [
        command.strip()
        for run in _dockerfile_build_runs()
        for command in run.removeprefix("RUN ").split("&&")
        if re.match(r"\s*(python -m )?pip install ", command)
    ]
    assert installs, "the build stage installs with pip"
    for command in installs:
        assert "-c constraints.txt" in command, command
    assert "--build-constraint constraints.txt" in installs[-1]
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if not line.startswith("#")
    ]
    assert "constraints.txt" not in ignored


def test_dev_sh_installs_with_the_lock_and_ci_checks_it() -> None:
    dev = (ROOT / "dev.sh").read_text()
    assert "LOCK=constraints.txt" in dev
    installs = [line.strip() for line in dev.splitlines() if "-m pip install" in line]
    project_installs = [line for line in installs if "$work/venv" not in line]
    assert project_installs
    for line in project_installs:
        assert '-c "$LOCK"' in line, line
    assert any('--build-constraint "$LOCK"' in line for line in project_installs)
    assert "install_locked \"$VENV/bin/python\" -e '.[test]'" in dev
    assert "./dev.sh lock-check" in (ROOT / ".ci" / "run").read_text()
    operations = (ROOT / "docs" / "operations.md").read_text()
    assert "./dev.sh lock" in operations
    assert "## Dependencies and the lock" in operations


def test_the_quix_benchmark_venv_decodes_with_the_locked_orjson_and_msgspec() -> None:
    """bench/quix_env.py pins "the fleet's versions" of both decoders: the lock's."""
    from bench.quix_env import REQUIREMENTS

    pinned = dict(requirement.split("==") for requirement in REQUIREMENTS)
    pins = _pins()
    for name in ("orjson", "msgspec"):
        assert Version(pinned[name]) == pins[name], f"bench/quix_env.py pins {name}"

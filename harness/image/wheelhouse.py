"""Every wheel the image installs, downloaded once into a local wheelhouse (docs/deploying.md,
The image, built here).

The download runs in a container of the base image itself, so pip resolves for exactly the
Python the image runs (Debian's 3.11.2 needs `async-timeout`, a newer 3.11 does not): pip,
the build backend and every dependency of the project, at the versions of constraints.txt.
It uses the host's network and the host's CA certificates (a TLS-intercepting proxy the host
trusts is trusted in there too) and the host's `PIP_INDEX_URL`, if set. The Dockerfile's
build then installs from the wheelhouse alone, with no network. A wheelhouse is keyed by
constraints.txt, pyproject.toml and the base recipe, and reused until one of them changes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import tomllib
from pathlib import Path
from typing import Final

from harness.image.base import recipe_id
from harness.image.tools import cache_dir, run_tool
from workers.stack.service import Echo

HOST_CA_BUNDLE: Final = Path("/etc/ssl/certs/ca-certificates.crt")
PASSED_PIP_SETTINGS: Final = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST")
_DOWNLOAD_TIMEOUT_SECONDS: Final = 900.0


def build_stage_sources(dockerfile: Path) -> list[str]:
    """What the Dockerfile's build stage copies from the context (`COPY src... dest`)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages = re.split(r"^FROM\s", text, flags=re.MULTILINE)
    sources: list[str] = []
    for line in stages[1].splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(word.startswith("--from") for word in words):
            sources += [word for word in words[1:-1] if not word.startswith("--")]
    return sources


def wheelhouse_key(root: Path) -> str:
    digest = hashlib.sha256(recipe_id().encode())
    for name in ("constraints.txt", "pyproject.toml"):
        digest.update((root / name).read_bytes())
    return digest.hexdigest()[:12]


def ensure_wheelhouse(root: Path, base_image: str, echo: Echo, *, verbose: bool = False) -> Path:
    """The wheelhouse for the project at `root`, downloaded when missing."""
    wheels = cache_dir() / f"wheels-{wheelhouse_key(root)}"
    if wheels.is_dir():
        return wheels
    echo(f"downloading the image's wheels into {wheels}")
    partial = wheels.with_name(wheels.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    wanted = ["pip", "setuptools", *pyproject["build-system"]["requires"]]
    sources = " ".join(
        f"/src/{shlex.quote(name)}" for name in build_stage_sources(root / "Dockerfile")
    )
    script = (
        f"python -m venv /tmp/venv && mkdir /tmp/src && cp -r {sources} /tmp/src && cd /tmp/src"
        " && /tmp/venv/bin/pip install -q --disable-pip-version-check -c constraints.txt pip"
        " && /tmp/venv/bin/pip download -q --disable-pip-version-check -d /wheels"
        " -c constraints.txt --build-constraint constraints.txt . "
        + " ".join(shlex.quote(requirement) for requirement in wanted)
    )
    options = ["--network=host", f"--volume={root}:/src:ro", f"--volume={partial}:/wheels"]
    if HOST_CA_BUNDLE.is_file():
        options.append(f"--volume={HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro")
    options += [f"--env={name}" for name in PASSED_PIP_SETTINGS if os.environ.get(name)]
    run_tool(
        ["podman", "run", "--rm", *options, base_image, "sh", "-c", script],
        what="downloading the wheels",
        timeout=_DOWNLOAD_TIMEOUT_SECONDS,
        echo_output=verbose,
    )
    partial.rename(wheels)
    for old in cache_dir().glob("wheels-*"):
        if old != wheels and not old.name.endswith(".partial"):
            shutil.rmtree(old, ignore_errors=True)
    return wheels

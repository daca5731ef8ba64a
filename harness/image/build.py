"""`buildah bud` of the Dockerfile on the local base image and wheelhouse (docs/deploying.md,
The image, built here).

The build runs without network (`--network=none`): the base image comes from local storage
(`--pull=never`), pip installs from the wheelhouse mounted at /mnt (`PIP_NO_INDEX`,
`PIP_FIND_LINKS`): a directory every Debian root filesystem has, so the mount leaves no
mount point behind in the image. The image is labelled with a hash of what it is built
from (the Dockerfile, the files its build stage copies, the base image, the wheelhouse): an
unchanged tree is not built again, a changed one is built afresh and replaces the previous
image, so nothing piles up in podman's storage.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from harness.image.base import BASE_IMAGE, ensure_base
from harness.image.tools import (
    build_lock,
    ensure_tools,
    image_id,
    image_label,
    remove_image,
    run_tool,
)
from harness.image.wheelhouse import build_stage_sources, ensure_wheelhouse
from workers.stack.service import Echo

ROOT: Final = Path(__file__).resolve().parents[2]
IMAGE: Final = "localhost/workers:dev"
WHEELS_MOUNT: Final = "/mnt"
CONTEXT_LABEL: Final = "workers.build-context"
_BUILD_TIMEOUT_SECONDS: Final = 1200.0


@dataclass(frozen=True)
class BuiltImage:
    name: str
    image_id: str
    size_bytes: int
    #: Seconds each phase took: tools, base, wheels, build (0 when it was up to date).
    seconds: dict[str, float] = field(default_factory=dict)


def _context_files(root: Path) -> Iterator[Path]:
    """The files the build stage copies (.dockerignore's caches left out), in a fixed order."""
    for source in build_stage_sources(root / "Dockerfile"):
        path = root / source
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            parts = file.relative_to(root).parts
            if file.is_file() and not any(
                part == "__pycache__" or part.endswith(".egg-info") for part in parts
            ):
                yield file


def context_id(root: Path, base_image_id: str, wheels: Path) -> str:
    digest = hashlib.sha256(f"{base_image_id}\n{wheels.name}\n{WHEELS_MOUNT}\n".encode())
    for file in [root / "Dockerfile", *_context_files(root)]:
        digest.update(f"{file.relative_to(root)}\n".encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def bud_argv(root: Path, base_image: str, wheels: Path, context: str) -> list[str]:
    """The offline `buildah bud` of the Dockerfile at `root`."""
    return [
        "buildah", "bud", "--pull=never", "--network=none",
        f"--volume={wheels}:{WHEELS_MOUNT}:ro", f"--build-arg=PYTHON_IMAGE={base_image}",
        "--build-arg=PIP_NO_INDEX=1", f"--build-arg=PIP_FIND_LINKS={WHEELS_MOUNT}",
        f"--label={CONTEXT_LABEL}={context}", f"--file={root / 'Dockerfile'}",
        f"--tag={IMAGE}", str(root),
    ]  # fmt: skip


def build_image(
    echo: Echo, *, root: Path = ROOT, refresh_base: bool = False, verbose: bool = False
) -> BuiltImage:
    """Install the tools, make the base and the wheelhouse if needed, build IMAGE if needed."""
    seconds: dict[str, float] = {}
    started = time.monotonic()

    def lap(phase: str) -> None:
        nonlocal started
        now = time.monotonic()
        seconds[phase] = now - started
        started = now

    ensure_tools(echo)
    lap("tools")
    with build_lock():
        # Replaced images are removed at the end: the image first, then the base it was on.
        previous = (image_id(IMAGE), image_id(BASE_IMAGE))
        base = ensure_base(echo, refresh=refresh_base, verbose=verbose)
        base_id = image_id(base)
        assert base_id is not None, base
        lap("base")
        wheels = ensure_wheelhouse(root, base, echo, verbose=verbose)
        lap("wheels")
        context = context_id(root, base_id, wheels)
        if image_label(IMAGE, CONTEXT_LABEL) != context:
            echo(f"building {IMAGE} from {root / 'Dockerfile'} (buildah, offline)")
            run_tool(
                bud_argv(root, base, wheels, context),
                what=f"buildah bud of {root / 'Dockerfile'}",
                timeout=_BUILD_TIMEOUT_SECONDS,
                echo_output=verbose,
            )
        lap("build")
        built = image_id(IMAGE)
        assert built is not None, IMAGE
        for old in previous:
            if old is not None and old not in (built, base_id):
                remove_image(old)
        size = run_tool(
            ["podman", "image", "inspect", "--format", "{{.Size}}", IMAGE],
            what="podman image inspect",
            timeout=60,
        )
    return BuiltImage(IMAGE, built, int(size), seconds)

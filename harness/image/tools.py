"""The container tools and their configuration (docs/deploying.md, The image, built here).

Every buildah and podman call here runs with `CONTAINERS_CONF` pointing at a file of ours:

- runtime `runc`: crun (podman's default on Debian) refuses hosts whose cgroups are mounted
  in hybrid v1/v2 mode, as some VMs and CI sandboxes have them;
- default ulimits no higher than this process's own hard limits: podman's defaults raise
  `nofile` and `nproc`, which a root without CAP_SYS_RESOURCE (a sandboxed root) may not do.
"""

from __future__ import annotations

import fcntl
import os
import resource
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from workers.stack.apt import apt_install
from workers.stack.errors import StackError
from workers.stack.service import Echo

#: Debian package → the command it brings.
PACKAGES: Final = {
    "buildah": "buildah",
    "podman": "podman",
    "runc": "runc",
    "mmdebstrap": "mmdebstrap",
}
#: Threads and processes a container's user may have (far more than a worker starts).
MAX_PROCESSES: Final = 4096


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/workers/image`, else `~/.cache/workers/image`."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "workers" / "image"


def ensure_tools(echo: Echo) -> None:
    """Install whichever of the Debian packages is missing (apt-get, as root)."""
    if os.geteuid() != 0:
        raise StackError(
            "building and running the image needs root (rootful buildah and podman); "
            "run ./dev.sh image as root or with sudo"
        )
    missing = [package for package, command in PACKAGES.items() if shutil.which(command) is None]
    if missing:
        apt_install(missing, needed_for="the container image", echo=echo)


def containers_conf() -> Path:
    """Write (again) and return the containers.conf every call here uses."""
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    processes = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], MAX_PROCESSES)
    path = cache_dir() / "containers.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = (
        "# Written by harness/image/tools.py (docs/deploying.md, The image, built here).\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={files}:{files}", "nproc={processes}:{processes}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
    )
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return path


def container_env() -> dict[str, str]:
    """This process's environment with `CONTAINERS_CONF` set."""
    return {**os.environ, "CONTAINERS_CONF": str(containers_conf())}


def run_tool(
    argv: Sequence[str],
    *,
    what: str,
    timeout: float,
    echo_output: bool = False,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run buildah, podman or mmdebstrap; its output, or `StackError` with its last lines.

    `echo_output` lets the output through to the terminal as it comes instead.
    """
    result = subprocess.run(
        list(argv),
        env=dict(env) if env is not None else container_env(),
        stdin=subprocess.DEVNULL,
        stdout=None if echo_output else subprocess.PIPE,
        stderr=None if echo_output else subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join(f"  {line}" for line in (result.stdout or "").splitlines()[-30:])
        raise StackError(f"{what} failed (exit status {result.returncode})\n{tail}".rstrip())
    return result.stdout or ""


def image_label(name: str, label: str) -> str | None:
    """The value of `label` on the local image `name`; None without the image or the label."""
    result = subprocess.run(
        ["podman", "image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', name],
        env=container_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    value = result.stdout.strip()
    return value if result.returncode == 0 and value not in ("", "<no value>") else None


def image_id(name: str) -> str | None:
    """The id of the local image `name`, None when there is none."""
    result = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", name],
        env=container_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def remove_image(identifier: str) -> None:
    """Remove an image that was replaced; one still in use (a container, a child) stays."""
    subprocess.run(
        ["podman", "rmi", identifier], env=container_env(), capture_output=True, check=False
    )


@contextmanager
def build_lock() -> Iterator[None]:
    """One build at a time on this machine (the caches and tags are shared)."""
    path = cache_dir() / "build.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

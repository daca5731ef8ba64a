"""Running the image as a Kubernetes pod of deploy/kubernetes runs it (docs/deploying.md, The
image, built here): the Dockerfile's non-root user, a read-only root filesystem with only a
tmpfs at /tmp writable, no capabilities, no privilege escalation. With the host's network,
so the local stack on 127.0.0.1 is reachable.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from harness.image.build import ROOT
from workers.common.settings import Settings

TMP_SIZE: Final = "256m"  # the pods' /tmp emptyDir


def image_user(dockerfile: Path = ROOT / "Dockerfile") -> str:
    """The final stage's `USER uid:gid`."""
    users = re.findall(r"^USER\s+(\S+)", dockerfile.read_text(), flags=re.MULTILINE)
    return str(users[-1])


def hardened_run_argv(
    image: str, command: Sequence[str], *, name: str | None = None, env: Sequence[str] = ()
) -> list[str]:
    """`podman run` of `command` in `image`; `env` names variables passed from the caller's
    environment (their values never appear on the command line)."""
    argv = [
        "podman", "run", "--rm", "--network=host",
        "--read-only", "--read-only-tmpfs=false", f"--tmpfs=/tmp:rw,size={TMP_SIZE},mode=1777",
        f"--user={image_user()}", "--cap-drop=ALL", "--security-opt=no-new-privileges",
    ]  # fmt: skip
    if name is not None:
        argv.append(f"--name={name}")
    argv += [f"--env={variable}" for variable in env]
    return [*argv, image, *command]


def stack_env(settings: Settings) -> dict[str, str]:
    """The variables that point a container at the stack `settings` describe."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
    }

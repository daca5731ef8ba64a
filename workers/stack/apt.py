"""Installing the Debian packages a service needs."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence

from workers.stack.commands import is_root, run_command
from workers.stack.errors import StackError
from workers.stack.service import Echo

log = logging.getLogger(__name__)


def apt_install(packages: Sequence[str], *, needed_for: str, echo: Echo) -> None:
    """Install Debian packages with apt-get when root; otherwise say how to install them."""
    names = " ".join(packages)
    if not is_root():
        raise StackError(
            f"{needed_for} needs the Debian package(s) {names}, which are not installed; "
            f"install them with: sudo apt-get install -y {names}"
        )
    if shutil.which("apt-get") is None:
        raise StackError(
            f"{needed_for} needs {names}, and apt-get is not available: "
            "install it with this system's package manager"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    echo(f"installing Debian package(s) {names} for {needed_for}")
    try:
        run_command(install, what=f"apt-get install {names}", timeout=900, env=env)
    except StackError as first:
        # Usually the package lists are missing or stale (a fresh container): refresh them.
        log.info("apt-get install failed, running apt-get update and retrying: %s", first)
        run_command(["apt-get", "update"], what="apt-get update", timeout=900, env=env)
        run_command(install, what=f"apt-get install {names}", timeout=900, env=env)

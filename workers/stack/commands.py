"""Running a command to completion, with a readable error when it fails."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from workers.stack.errors import StackError

log = logging.getLogger(__name__)


def is_root() -> bool:
    return os.geteuid() == 0


def run_command(
    argv: Sequence[str],
    *,
    what: str,
    timeout: float = 300.0,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    as_user: str | None = None,
) -> str:
    """Run a command to completion and return its output; `StackError` when it fails.

    `as_user` runs it as that system user through `runuser` when this process is root.
    """
    command = list(argv)
    if as_user is not None and is_root():
        command = ["runuser", "-u", as_user, "--", *command]
    log.debug("running %s", command)
    try:
        result = subprocess.run(
            command,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as error:
        raise StackError(f"{what} failed: {error.filename or command[0]} not found") from error
    except subprocess.TimeoutExpired as error:
        raise StackError(f"{what} did not finish within {timeout:.0f} s") from error
    except OSError as error:
        raise StackError(f"{what} failed: {error}") from error
    if result.returncode != 0:
        output = "\n".join(f"  {line}" for line in result.stdout.splitlines()[-20:])
        raise StackError(f"{what} failed (exit status {result.returncode}):\n{output}")
    return result.stdout

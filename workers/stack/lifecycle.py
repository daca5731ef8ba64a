"""Detached service processes: start one in its own session, wait, stop it."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from workers.stack.errors import StackError
from workers.stack.pids import pid_alive

log = logging.getLogger(__name__)


def spawn_detached(
    argv: Sequence[str], *, log_path: Path, cwd: Path, env: Mapping[str, str] | None = None
) -> int:
    """Start `argv` in its own session, output appended to `log_path`; return its pid.

    The process is started through a shell that exits at once, so it is never a child of
    this Python process: it outlives it, and no zombie or `ResourceWarning` is left behind.
    """
    script = 'log=$1; shift; exec "$@" </dev/null >>"$log" 2>&1 & echo $!'
    try:
        result = subprocess.run(
            ["/bin/sh", "-c", script, "sh", str(log_path), *argv],
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            start_new_session=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as error:
        raise StackError(f"could not start {argv[0]}: {error}") from error
    pid_text = result.stdout.strip()
    if not pid_text.isdigit():
        raise StackError(f"could not start {argv[0]}: no pid from the launcher ({pid_text!r})")
    return int(pid_text)


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(interval, remaining))


def terminate(pid: int, *, name: str, timeout: float) -> None:
    """SIGTERM, wait up to `timeout` seconds, then SIGKILL.

    A SIGCONT follows the SIGTERM, so a process paused with SIGSTOP (a fault injected by
    `workers.stack.kafka_cluster`) handles it too instead of waiting for the SIGKILL.
    """
    log.info("stopping %s (pid %d)", name, pid)
    try:
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        return
    if wait_until(lambda: not pid_alive(pid), timeout, interval=0.1):
        return
    log.warning("%s (pid %d) ignored SIGTERM for %.0f s, killing it", name, pid, timeout)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not wait_until(lambda: not pid_alive(pid), 10.0, interval=0.1):
        raise StackError(f"{name} (pid {pid}) did not exit after SIGKILL")

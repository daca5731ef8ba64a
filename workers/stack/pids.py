"""Pid files and liveness: which process the stack started for a service."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from workers.stack.procfs import listening_pids

log = logging.getLogger(__name__)


def pid_alive(pid: int) -> bool:
    """True when `pid` is a live process (a zombie waiting to be reaped counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # No procfs: trust kill(0).
    # The state letter follows the parenthesised command name, which may contain spaces.
    state = stat.rpartition(")")[2].split()[:1]
    return state != ["Z"]


def pid_exists(pid: int) -> bool:
    """True while `pid` exists at all, zombies included (what `kill -0` sees)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split(maxsplit=1)[:1]
    except OSError:
        return None
    if not first or not first[0].isdigit():
        return None
    pid = int(first[0])
    return pid if pid > 0 else None


def write_pid(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f"{pid}\n")
    temporary.replace(path)


def remove_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def live_pid(pid_file: Path, is_ours: Callable[[int], bool]) -> int | None:
    """The pid recorded in `pid_file` if that process is alive and ours; else clean up."""
    pid = read_pid(pid_file)
    if pid is None:
        if pid_file.exists():
            log.warning("removing unreadable pid file %s", pid_file)
            remove_file(pid_file)
        return None
    if pid_alive(pid) and is_ours(pid):
        return pid
    log.info("removing stale pid file %s (pid %d is gone)", pid_file, pid)
    remove_file(pid_file)
    return None


def find_own_pid(
    pid_file: Path, port: int, is_ours: Callable[[int], bool], service: str
) -> int | None:
    """The stack's own process for a service: from its pid file, or else by who holds the
    port (a pid file can be lost while the process keeps running); records what it finds."""
    pid = live_pid(pid_file, is_ours)
    if pid is not None:
        return pid
    for candidate in listening_pids(port):
        if is_ours(candidate):
            log.info("found the stack's %s running as pid %d, recording it", service, candidate)
            write_pid(pid_file, candidate)
            return candidate
    return None

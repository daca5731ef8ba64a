"""Service log files: their tail for error messages, a marker at each start."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a (log) file, or a note that it is missing."""
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - 64 * 1024))
            text = file.read().decode(errors="replace")
    except OSError:
        return f"({path} does not exist)"
    selected = text.splitlines()[-lines:]
    return "\n".join(f"  {line}" for line in selected) if selected else f"({path} is empty)"


def start_log(path: Path, service: str, max_bytes: int = 20 * 1024 * 1024) -> None:
    """Begin a start's section of a service log: rotate a big log to `<name>.1`, add a marker."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size > max_bytes:
            path.replace(path.with_name(path.name + ".1"))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    with path.open("a") as file:
        file.write(f"----- {stamp} workers stack up: starting {service} -----\n")

"""The temporary files an assemble writes the whole file to, in one directory
(`--temp-dir`, default the system's).

Each file is named `workers-assemble-{pid}-{random}`: a worker that died (kill -9, OOM) leaves
its file behind, and the next worker to start in that directory removes the files of every
process that no longer runs, and of its own pid (in a container the restarted process often
has the pid of the one that died).
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Final

logger = logging.getLogger(__name__)

PREFIX: Final = "workers-assemble-"


class ScratchDirectory:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def new_path(self) -> Path:
        return self.directory / f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex}"

    def remove_leftovers(self) -> int:
        """Remove the files left by processes that are gone; returns how many."""
        removed = 0
        for path in self.directory.glob(f"{PREFIX}*"):
            pid = _pid(path.name)
            if pid is None or (pid != os.getpid() and _alive(pid)):
                continue
            path.unlink(missing_ok=True)
            removed += 1
        if removed:
            logger.info(
                "removed files left by stopped assemble workers",
                extra={"directory": str(self.directory), "files": removed},
            )
        return removed


def _pid(name: str) -> int | None:
    digits = name[len(PREFIX) :].partition("-")[0]
    return int(digits) if digits.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True

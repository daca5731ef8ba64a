"""The temporary files an assemble writes a debug file to (symbolic reads a path), in one
directory (`--temp-dir`, default the system's), and the writer that fills one.

Each file is named `workers-assemble-{pid}-{random}`: a worker that died (kill -9, OOM) leaves
its file behind, and the next worker to start in that directory removes the files of every
process that no longer runs, and of its own pid (in a container the restarted process often
has the pid of the one that died).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final, Self

logger = logging.getLogger(__name__)

PREFIX: Final = "workers-assemble-"
#: Chunks handed to the writing thread and not yet written.
WRITES_IN_FLIGHT: Final = 2


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


class ScratchWriter:
    """Writes a file in a thread of its own while the caller reads and hashes the next chunks
    (both release the GIL): writing then costs almost nothing next to reading. At most
    `in_flight` chunks wait to be written; `write` raises the error of a write that failed.
    Leaving the context waits for every write before the file is closed."""

    def __init__(self, path: Path, in_flight: int = WRITES_IN_FLIGHT) -> None:
        self.__in_flight = in_flight
        self.__writes: deque[Future[int]] = deque()
        self.__out: BinaryIO = path.open("wb")
        self.__writer = ThreadPoolExecutor(1, thread_name_prefix="assemble-write")

    def __enter__(self) -> Self:
        return self

    def write(self, data: bytes) -> None:
        self.__writes.append(self.__writer.submit(self.__out.write, data))
        while len(self.__writes) > self.__in_flight:
            self.__writes.popleft().result()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.__writer.shutdown(wait=True)
            if exc_type is None:
                for write in self.__writes:
                    write.result()
        finally:
            self.__out.close()


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

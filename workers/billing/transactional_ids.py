"""Which transactional id a billing process uses: stable across restarts, unique on its host.

The id is `<prefix>-<n>`. By default the prefix is `billing-<group>-<member>`, where the member
is the static group instance id or the host name (a pod's name in Kubernetes), and `n` is the
first number from the process index up that no other live process on this host holds. A
process holds its number through an exclusive `flock` on a file under the temp directory; the
kernel releases it when the process dies, even by kill -9, so a restarted process gets the same
id back. That matters: `init_transactions` with the same id aborts what the dead process left
open at once, where a new id would leave its partitions blocked until the broker's
transaction timeout. An explicit `--transactional-id PREFIX` is used as given (`PREFIX-<process
index>`), even if another process holds it: the newer process then fences the older one.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
from pathlib import Path
from typing import Final, TextIO

LOCK_DIRECTORY_NAME: Final = "workers-transactional-ids"
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]")


class TransactionalIdClaim:
    """A transactional id and the lock that keeps other local processes off it."""

    def __init__(self, transactional_id: str, lock: TextIO | None) -> None:
        self.transactional_id = transactional_id
        self.__lock = lock

    def release(self) -> None:
        if self.__lock is not None:
            self.__lock.close()
            self.__lock = None


def claim_transactional_id(
    prefix: str, first_index: int, directory: Path | None = None
) -> TransactionalIdClaim:
    """The first `prefix-n` (n >= first_index) that no live process on this host holds."""
    locks = directory or Path(tempfile.gettempdir()) / LOCK_DIRECTORY_NAME
    locks.mkdir(parents=True, exist_ok=True)
    index = first_index
    while True:
        candidate = f"{prefix}-{index}"
        handle = (locks / f"{_UNSAFE.sub('_', candidate)}.lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            index += 1
            continue
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return TransactionalIdClaim(candidate, handle)

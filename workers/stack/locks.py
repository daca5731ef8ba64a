"""Serialising `workers stack up` and `down` runs that share a state directory."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import time
from collections.abc import Iterator

from workers.stack.errors import StackError
from workers.stack.paths import StackPaths
from workers.stack.service import Echo


@contextlib.contextmanager
def stack_lock(paths: StackPaths, echo: Echo, timeout: float = 900.0) -> Iterator[None]:
    """Serialise `up` and `down` runs that share a state directory."""
    paths.create()
    with (paths.run / "stack.lock").open("a") as handle:
        announced = False
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if not announced:
                echo(f"waiting for another `workers stack` command using {paths.root}")
                announced = True
            if time.monotonic() > deadline:
                raise StackError(f"another `workers stack` command holds {paths.root} too long")
            time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

"""Free TCP ports for a stack of a test's or benchmark's own."""

from __future__ import annotations

import contextlib
import random
import socket


def free_port_block(count: int) -> int:
    """A base port with `count` free ports from it, below the ephemeral range (32768-), so
    that no client connection takes one of them before the servers bind it."""
    candidates = list(range(21000, 32000, 10))
    random.shuffle(candidates)
    for base in candidates:
        with contextlib.ExitStack() as bound:
            try:
                for port in range(base, base + count):
                    probe = bound.enter_context(socket.socket())
                    probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise RuntimeError("no block of free ports below 32000")

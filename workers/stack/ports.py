"""Port probes: is something listening, and who."""

from __future__ import annotations

import socket

from workers.stack.procfs import describe_process, listening_pids


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on `host:port`."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_user(port: int) -> str:
    """Who holds `port`, for error messages: `pid 12 (java …)` or `an unknown process`."""
    pids = sorted(listening_pids(port))
    if not pids:
        return "an unknown process"
    return ", ".join(describe_process(pid) for pid in pids)

"""What Linux procfs says about a process or a port (best effort, same namespace)."""

from __future__ import annotations

import os
from pathlib import Path


def processes_in(directory: Path) -> list[int]:
    """Live processes whose working directory is `directory` (Linux procfs, best effort)."""
    target = directory.resolve()
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and process_cwd(int(entry.name)) == target:
            found.append(int(entry.name))
    return found


def process_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def process_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def describe_process(pid: int) -> str:
    """`pid 123 (java -Xmx1g …)`: a short, human description of a process."""
    command = " ".join(process_cmdline(pid)) or process_name(pid) or "?"
    if len(command) > 120:
        command = command[:117] + "..."
    return f"pid {pid} ({command})"


def listening_pids(port: int) -> set[int]:
    """Processes listening on TCP `port` (best effort: Linux procfs, same namespace)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A = LISTEN
                continue
            if int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    pids: set[int] = set()
    if not inodes:
        return pids
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            descriptors = list((entry / "fd").iterdir())
        except OSError:
            continue
        for descriptor in descriptors:
            try:
                target = os.readlink(descriptor)
            except OSError:
                continue
            if target in inodes:
                pids.add(int(entry.name))
                break
    return pids

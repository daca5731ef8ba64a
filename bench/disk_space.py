"""Room on the disk for what a benchmark is about to write, checked before it starts.

A benchmark that fills the disk takes the local stack down with it: the broker stops when it
cannot append to its log, and a shell on a full disk cannot even record a command's exit
status. `bench.blob_ingest --keep-files` leaves gigabytes behind per run, so runs back to
back fill a disk quietly (docs/benchmarks.md, Blob ingest).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Final

#: Left free besides what the run writes: PostgreSQL's WAL, the broker's other segments,
#: the shell's own files.
HEADROOM_BYTES: Final = 2 * 1024**3


class NotEnoughDiskSpace(RuntimeError):
    pass


def _filesystem_of(path: Path) -> Path:
    """`path` if it exists, else its nearest existing parent (same filesystem)."""
    while not path.exists():
        path = path.parent
    return path


def check_free_space(
    planned: Mapping[Path, int], headroom: int = HEADROOM_BYTES
) -> dict[Path, int]:
    """Raise `NotEnoughDiskSpace` unless each filesystem has the bytes planned for the
    directories on it, plus `headroom`, free. Returns the free bytes found per directory."""
    needed_by_device: dict[int, int] = {}
    existing = {directory: _filesystem_of(directory) for directory in planned}
    for directory, size in planned.items():
        device = os.stat(existing[directory]).st_dev
        needed_by_device[device] = needed_by_device.get(device, 0) + size
    free: dict[Path, int] = {}
    for directory, path in existing.items():
        free[directory] = shutil.disk_usage(path).free
        needed = needed_by_device[os.stat(path).st_dev] + headroom
        if free[directory] < needed:
            together = ", ".join(f"{d} ({planned[d] / 1e9:.1f} GB)" for d in planned)
            raise NotEnoughDiskSpace(
                f"{directory} has {free[directory] / 1e9:.1f} GB free; this run writes "
                f"{(needed - headroom) / 1e9:.1f} GB to its filesystem ({together}) and "
                f"leaves {headroom / 1e9:.1f} GB to spare. Free space first (runs with "
                "--keep-files leave their files in bench-blob-ingest-* directories)"
            )
    return free

"""Running a benchmark as of another git revision, for a before/after comparison.

`figures_at_revision` extracts the revision with `git archive` into a temporary directory and
runs `python -m MODULE ARGS` there, on that revision's code (its directory first on
`PYTHONPATH`) against the same local stack, and returns the JSON line the run ends with.
The revision's benchmark must accept the arguments given.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from workers.common.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def figures_at_revision(
    revision: str, module: str, args: Sequence[str], settings: Settings
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-revision-") as directory:
        archive = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", revision],
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", directory], input=archive.stdout, check=True)
        result = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=directory,
            env={
                **os.environ,
                "PYTHONPATH": directory,
                # The same stack: it is named by its state directory.
                "WORKERS_STATE_DIR": str(settings.state_dir.resolve()),
            },
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
    figures: dict[str, Any] = orjson.loads(result.stdout.strip().splitlines()[-1])
    return figures

"""The README's main job, end to end: `workers demo` as a newcomer runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from workers.billing.message import BucketError, parse_bucket
from workers.billing.traffic import sample_traffic
from workers.demo import SAMPLE_SEED

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_demo_processes_every_sample_message_and_reports_the_dlq() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workers", "demo", "--messages", "3000", "--timeout", "120"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("│ billing"))
    cells = [cell.strip() for cell in row.strip("│").split("│")]
    worker, produced, processed, dlq, output, step_series = cells
    assert (worker, produced, processed) == ("billing", "3000", "3000")
    # Exactly the malformed sample messages reach the DLQ (same seed as the demo).
    malformed = 0
    for message in sample_traffic(3000, SAMPLE_SEED):
        try:
            parse_bucket(message.value)
        except BucketError:
            malformed += 1
    assert malformed > 0
    assert int(dlq) == malformed
    assert re.fullmatch(r"outcomes-billing: \d+", output)
    assert int(output.split(": ")[1]) > 0
    assert int(step_series) > 0

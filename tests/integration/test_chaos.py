"""The chaos suite's short form (docs/chaos.md): `python -m bench.chaos --short`, every fault
once, on a 3-broker stack of its own (the shared stack is never touched).

The suite is run as the command it is, and judged by the JSON line it ends with: nothing
lost anywhere, no duplicate where none is allowed (at-least-once billing's are reported),
every group drained and recovered, the chart written. The table is printed and the figures
are recorded as test properties.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from harness.worker_process import ROOT

pytestmark = pytest.mark.integration

FAULTS = (
    "broker-kill",
    "broker-pause",
    "worker-kill",
    "postgres-restart",
    "redis-restart",
    "assemble-kill",
)
UNITS = {"billing exactly-once", "billing at-least-once", "billing flags", "blob-ingest"}
SUITE_TIMEOUT_SECONDS = 840
#: How long the suite may take to stop its stack once told to (SIGTERM).
TEARDOWN_SECONDS = 120


def run_suite(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m bench.chaos ARGS`; past the deadline it is stopped with SIGTERM, so that it
    tears its stack down (a SIGKILL would leave its brokers running), and the test fails."""
    with subprocess.Popen(
        [sys.executable, "-m", "bench.chaos", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=SUITE_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.terminate()
            stdout, stderr = process.communicate(timeout=TEARDOWN_SECONDS)
            raise AssertionError(
                f"the chaos suite took over {SUITE_TIMEOUT_SECONDS} s:\n{stderr[-3000:]}"
            ) from None
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.timeout(SUITE_TIMEOUT_SECONDS + TEARDOWN_SECONDS + 60)
def test_short_chaos_suite_loses_nothing_and_recovers_from_every_fault(
    tmp_path: Path, record_property: Any
) -> None:
    chart = tmp_path / "chaos.png"
    result = run_suite("--short", "--chart", str(chart))
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr[-3000:]
    print("\n" + "\n".join(lines[:-1]))
    figures = orjson.loads(lines[-1])
    record_property("chaos", figures)

    assert figures["errors"] == {}, result.stderr[-3000:]
    assert [s["fault"] for s in figures["scenarios"]] == list(FAULTS)
    for scenario in figures["scenarios"]:
        fault = scenario["fault"]
        assert scenario["drained"], f"{fault}: a group did not commit everything"
        assert scenario["stream_failures"] == [], fault
        units = {unit["unit"]: unit for unit in scenario["units"]}
        assert set(units) == ({"assemble"} if fault == "assemble-kill" else UNITS)
        for name, unit in units.items():
            assert unit["units"] > 0, f"{fault}: no {name} units"
            assert unit["lost"] == 0, f"{fault}: {name} lost {unit['lost']}"
            if not unit["duplicates_allowed"]:
                assert unit["duplicates"] == 0, f"{fault}: {name} duplicated"
            if name != "billing flags":
                assert unit["recovery_s"] is not None, f"{fault}: {name} did not recover"
    assert figures["lost_total"] == 0
    assert figures["passed"] is True
    assert result.returncode == 0
    assert chart.stat().st_size > 10_000

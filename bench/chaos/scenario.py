"""One scenario: fresh topics and groups, the workers and their live streams, one fault,
recovery, and the verdicts.

1. The workloads create their topics and rows; their workers start (supervised) and the lag
   sampler and the streams start.
2. Once every group has committed something and worked off the backlog of its start (lag
   under `SETTLED_SECONDS` of its stream), the stream runs `warmup` more seconds; the last
   `steady` of them are the steady window (`lag.Recovery`).
3. The fault runs (`faults`), then the scenario waits until every group has recovered (or
   `recover_timeout` passes: reported as not recovered).
4. The streams stop; every group must then commit everything (`drain_timeout`).
5. The workers stop (SIGTERM) and each workload checks what they made (`workload.Verdict`).

Everything started is stopped in the end, whatever happened.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.chaos.brokers import Brokers
from bench.chaos.faults import Fault, FaultContext, FaultWindow, hold
from bench.chaos.lag import CONSECUTIVE, LagSampler, Recovery, Sample
from bench.chaos.offsets import CommitWatch, Watched
from bench.chaos.processes import Fleet
from bench.chaos.stack import ChaosStack
from bench.chaos.workload import Verdict, Workload

#: A group has settled once its lag is under this many seconds of its stream.
SETTLED_SECONDS = 2.0


@dataclass(frozen=True)
class Timing:
    warmup: float
    steady: float
    recover_timeout: float
    drain_timeout: float
    sample_interval: float = 0.5
    first_commit_timeout: float = 120.0


@dataclass(frozen=True)
class Row:
    """One line of the table: a kind of unit under one fault."""

    fault: str
    verdict: Verdict
    recovery: Recovery | None
    #: Exits of the worker's own accord during the scenario (a kill is not one).
    exits: list[int]


@dataclass
class ScenarioResult:
    fault: str
    window: FaultWindow
    rows: list[Row]
    #: The lag samples per group, for the chart, in seconds since `origin`.
    samples: dict[str, list[Sample]]
    origin: float
    #: Every group had worked off the backlog of its start before the warmup began.
    settled: bool
    drained: bool
    stream_failures: list[str] = field(default_factory=list)
    stop_codes: dict[str, int | None] = field(default_factory=dict)

    def relative(self, at: float) -> float:
        return at - self.origin


def run_scenario(
    stack: ChaosStack,
    brokers: Brokers,
    fault: Fault,
    workloads: Sequence[Workload],
    timing: Timing,
    target_broker: Callable[[], int],
) -> ScenarioResult:
    watched = [w for workload in workloads for w in workload.watched()]
    fleet = Fleet()
    backlogs = {w.name: workload.backlog for workload in workloads for w in workload.watched()}
    sampler = LagSampler(stack.settings, watched, backlogs, timing.sample_interval)
    streaming = False
    try:
        for workload in workloads:
            workload.start_workers(fleet)
        sampler.start()
        origin = time.monotonic()
        for workload in workloads:
            workload.start_stream()
        streaming = True
        _await_first_commits(stack, watched, timing.first_commit_timeout)
        settled = _await_settled(sampler, watched, timing)
        hold(timing.warmup)
        steady = (time.monotonic() - timing.steady, time.monotonic())
        context = FaultContext(stack, brokers, fleet, watched, target_broker)
        window = fault.run(context)
        recoveries = _await_recovery(sampler, watched, steady, window, timing)
        for workload in workloads:
            workload.stop_stream()
        streaming = False
        drained = _await_drain(sampler, watched, timing.drain_timeout)
    finally:
        if streaming:
            for workload in workloads:
                workload.stop_stream()
        sampler.stop()
        stop_codes = fleet.stop()
    exits = {name: fleet.exit_codes(name) for name in fleet.names()}
    rows = [
        Row(
            fault.name,
            verdict,
            recoveries.get(verdict.watched) if verdict.watched else None,
            exits.get(verdict.watched, []) if verdict.watched else [],
        )
        for workload in workloads
        for verdict in workload.verify()
    ]
    return ScenarioResult(
        fault=fault.name,
        window=window,
        rows=rows,
        samples={name: list(found) for name, found in sampler.samples.items()},
        origin=origin,
        settled=settled,
        drained=drained,
        stream_failures=[f for workload in workloads for f in workload.stream_failures()],
        stop_codes=stop_codes,
    )


def _await_first_commits(stack: ChaosStack, watched: Sequence[Watched], timeout: float) -> None:
    watch = CommitWatch(stack.settings, watched)
    try:
        watch.wait_past({}, "first commits", timeout)
    finally:
        watch.close()


def _await_settled(sampler: LagSampler, watched: Sequence[Watched], timing: Timing) -> bool:
    """Wait (at most `first_commit_timeout`) until every group's last two samples are under
    `SETTLED_SECONDS` of its stream: the backlog that built up while the workers started is
    worked off, so the steady window sees the normal lag. False when that did not happen."""
    deadline = time.monotonic() + timing.first_commit_timeout

    def settled(w: Watched) -> bool:
        last = sampler.samples[w.name][-CONSECUTIVE:]
        limit = w.per_second * SETTLED_SECONDS
        return len(last) == CONSECUTIVE and all(sample.behind <= limit for sample in last)

    while not all(settled(w) for w in watched):
        if time.monotonic() > deadline:
            return False
        time.sleep(timing.sample_interval)
    return True


def _recovery(
    sampler: LagSampler,
    watched: Watched,
    steady: tuple[float, float],
    window: FaultWindow,
    timing: Timing,
) -> Recovery:
    floor = math.ceil(watched.per_second * timing.sample_interval)
    return Recovery.of(sampler.samples[watched.name], steady, (window.start, window.end), floor)


def _await_recovery(
    sampler: LagSampler,
    watched: Sequence[Watched],
    steady: tuple[float, float],
    window: FaultWindow,
    timing: Timing,
) -> dict[str, Recovery]:
    """Every group's recovery, once all have recovered or `recover_timeout` has passed."""
    deadline = time.monotonic() + timing.recover_timeout
    while True:
        found = {w.name: _recovery(sampler, w, steady, window, timing) for w in watched}
        if all(r.recovered_at is not None for r in found.values()):
            return found
        if time.monotonic() > deadline:
            return found
        time.sleep(timing.sample_interval)


def _await_drain(sampler: LagSampler, watched: Sequence[Watched], timeout: float) -> bool:
    """True once every group's latest sample, taken after the streams stopped, shows no lag."""
    stopped = time.monotonic()
    deadline = stopped + timeout

    def drained(w: Watched) -> bool:
        latest = sampler.latest(w.name)
        return latest is not None and latest.at > stopped and latest.lag == 0

    while not all(drained(w) for w in watched):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def describe(result: ScenarioResult) -> dict[str, Any]:
    """The scenario's figures, as the JSON line carries them."""
    return {
        "fault": result.fault,
        "fault_seconds": round(result.window.seconds, 2),
        "fault_details": dict(result.window.details),
        "settled": result.settled,
        "drained": result.drained,
        "stream_failures": result.stream_failures,
        "stop_exit_codes": result.stop_codes,
        "units": [
            {
                "unit": row.verdict.name,
                "units": row.verdict.units,
                "lost": row.verdict.lost,
                "duplicates": row.verdict.duplicates,
                "duplicates_allowed": row.verdict.duplicates_allowed,
                "recovery_s": _rounded(row.recovery.recovery_seconds if row.recovery else None),
                "behind_s": _rounded(row.recovery.behind_seconds if row.recovery else None),
                "peak_lag": row.recovery.peak_lag if row.recovery else None,
                "peak_backlog": row.recovery.peak_backlog if row.recovery else None,
                "lag_threshold": row.recovery.threshold if row.recovery else None,
                "worker_exits": row.exits,
                **row.verdict.details,
            }
            for row in result.rows
        ],
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)

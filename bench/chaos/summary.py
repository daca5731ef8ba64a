"""The chaos suite's report: a table, a chart and the JSON figures (`bench.report`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from bench import report
from bench.chaos.lag import GAP_SECONDS, Sample
from bench.chaos.scenario import Row, ScenarioResult, describe

RESULTS_DIR: Final = Path(__file__).resolve().parents[1] / "results"
DEFAULT_CHART: Final = RESULTS_DIR / "chaos.png"
COLUMNS: Final = (
    "fault",
    "unit",
    "units",
    "lost",
    "duplicates",
    "recover s",
    "behind s",
    "peak lag",
    "peak backlog",
    "exits",
)
COLOURS: Final = ("#2b7bba", "#e0812b", "#3a9e4f", "#c23b3b", "#8e5fb8")


def cell_duplicates(row: Row) -> str:
    count = f"{row.verdict.duplicates:,}"
    return f"{count} (allowed)" if row.verdict.duplicates_allowed else count


def cell_recovery(row: Row) -> str:
    if row.recovery is None:
        return "-"
    seconds = row.recovery.recovery_seconds
    return "not recovered" if seconds is None else f"{seconds:.1f}"


def print_table(results: Sequence[ScenarioResult]) -> None:
    report.print_table(
        COLUMNS,
        [
            [
                row.fault,
                row.verdict.name,
                f"{row.verdict.units:,}",
                f"{row.verdict.lost:,}",
                cell_duplicates(row),
                cell_recovery(row),
                f"{row.recovery.behind_seconds:.1f}" if row.recovery else "-",
                f"{row.recovery.peak_lag:,}" if row.recovery else "-",
                f"{row.recovery.peak_backlog:,}" if row.recovery else "-",
                ",".join(str(code) for code in row.exits) or "-",
            ]
            for result in results
            for row in result.rows
        ],
    )


def write_chart(results: Sequence[ScenarioResult], path: Path, title: str) -> None:
    """One panel per fault: how far each group is behind its stream (consumer lag + the
    stream's backlog, `lag.Sample.behind`) over time, the fault shaded, recoveries marked."""
    columns = min(len(results), 3)
    rows = math.ceil(len(results) / columns)
    with report.chart(path, columns, size=(6 * columns, 3.6 * rows), rows=rows) as (fig, axes):
        for index in range(rows * columns):
            axis = axes[index // columns][index % columns]
            if index >= len(results):
                axis.set_visible(False)
                continue
            _panel(axis, results[index])
        fig.suptitle(title)


def _panel(axis: Any, result: ScenarioResult) -> None:
    window = result.window
    axis.axvspan(
        result.relative(window.start),
        result.relative(window.end),
        color="#bbbbbb",
        alpha=0.5,
        label="fault",
    )
    recoveries = {row.verdict.watched: row.recovery for row in result.rows if row.recovery}
    for colour, (name, samples) in zip(COLOURS, result.samples.items(), strict=False):
        xs, ys = _with_gaps(result, samples)
        axis.plot(xs, ys, color=colour, linewidth=1, label=name)
        recovery = recoveries.get(name)
        if recovery is not None and recovery.recovered_at is not None:
            axis.axvline(
                result.relative(recovery.recovered_at), color=colour, linestyle=":", linewidth=1
            )
    axis.set_title(result.fault)
    axis.set_xlabel("seconds")
    axis.set_ylabel("behind: consumer lag + stream backlog")
    axis.set_yscale("symlog", linthresh=10)
    axis.set_ylim(bottom=0)
    axis.legend(fontsize=7, loc="upper right")


def _with_gaps(result: ScenarioResult, samples: Sequence[Sample]) -> tuple[list[float], ...]:
    """The samples as x and y, with a break (NaN) where none could be read for a while (its
    broker was down), so the line does not pretend to know the lag there."""
    xs: list[float] = []
    ys: list[float] = []
    previous: float | None = None
    for sample in samples:
        if previous is not None and sample.at - previous > GAP_SECONDS:
            xs.append(math.nan)
            ys.append(math.nan)
        xs.append(result.relative(sample.at))
        ys.append(float(sample.behind))
        previous = sample.at
    return xs, ys


def figures(
    results: Sequence[ScenarioResult],
    errors: Mapping[str, str],
    chart: Path,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    rows = [row for result in results for row in result.rows]
    return {
        "settings": dict(settings),
        "scenarios": [describe(result) for result in results],
        "errors": dict(errors),
        "lost_total": sum(row.verdict.lost for row in rows),
        "forbidden_duplicates_total": sum(
            row.verdict.duplicates for row in rows if not row.verdict.duplicates_allowed
        ),
        "at_least_once_duplicates_total": sum(
            row.verdict.duplicates for row in rows if row.verdict.duplicates_allowed
        ),
        "all_recovered": all(
            row.recovery.recovery_seconds is not None for row in rows if row.recovery
        ),
        "passed": passed(results) and not errors,
        "chart": str(chart),
    }


def passed(results: Sequence[ScenarioResult]) -> bool:
    """Nothing lost, no duplicate where none is allowed, every group drained (whether a
    scenario settled before its fault is reported, not judged: a slow machine may not)."""
    return all(
        result.drained and not result.stream_failures and not row.verdict.failed
        for result in results
        for row in result.rows
    )

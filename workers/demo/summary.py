"""The demo's summary, narrow enough for an 80-column terminal: one table of counts (one row
per worker), then each worker's own lines (from its hooks), then where the logs are.

Every count is of this run's traffic: messages the demo produced, input its group committed
since the run started, records committed to the DLQ and output topics since then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.table import Table

from workers.common.settings import Settings
from workers.demo.processes import DemoWorker

TITLE = "workers demo: this run's traffic"
COLUMNS = ("worker", "produced", "processed", "DLQ", "output")


def counts_table(settings: Settings, workers: Sequence[DemoWorker]) -> Table:
    table = Table(title=TITLE)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("worker", "output") else "right")
    for worker in workers:
        outputs = worker.outputs(settings)
        table.add_row(
            worker.name,
            str(worker.produced),
            str(worker.processed(settings)),
            str(worker.dead_lettered(settings)),
            "\n".join(f"{topic}: {count}" for topic, count in outputs.items()) or "-",
        )
    return table


def print_summary(
    console: Console,
    settings: Settings,
    workers: Sequence[DemoWorker],
    details: Mapping[str, Sequence[str]],
) -> None:
    """The counts table, then under each worker's name its summary lines and notes."""
    console.print(counts_table(settings, workers))
    for worker in workers:
        console.print(worker.name, style="bold", highlight=False)
        for line in [*details.get(worker.name, ()), *worker.notes]:
            console.print(f"  {line}", highlight=False, markup=False)
    console.print(
        "Each worker served /metrics while it ran; see it live with\n"
        "  workers run NAME --metrics-port 9101 and curl http://127.0.0.1:9101/metrics",
        highlight=False,
    )
    console.print(f"logs: {settings.state_dir / 'logs'}/demo-*.log", highlight=False)

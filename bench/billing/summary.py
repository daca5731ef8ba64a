"""The run's report: the rates table, the issue's ratios, the transactions, the chart."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from bench import report
from bench.billing.exactly_once import transaction_figures
from workers.billing.definition import DEFAULT_TRANSACTION_INTERVAL_MS


def print_table(rates: Mapping[str, float]) -> None:
    ceiling = rates.get("plain_billing") or max(rates.values())
    baselines = [name for name in ("arroyo_stock", "quix_streams") if rates.get(name)]
    baselines += [name for name in rates if "@" in name]
    report.print_table(
        ["variant", "msg/s", "vs plain_billing", *(f"vs {name}" for name in baselines)],
        [
            [
                variant,
                f"{rate:,.0f}",
                f"{rate / ceiling:.2f}",
                *(f"{rate / rates[name]:.2f}" for name in baselines),
            ]
            for variant, rate in rates.items()
        ],
    )


# Issue 13's targets: (numerator, denominator, at least).
RATIO_TARGETS: Final = (
    ("fleet_exactly_once", "fleet", 0.8),
    ("fleet_exactly_once", "quix_streams_exactly_once", 2.0),
    ("fleet", "plain_billing", 0.85),
)


def exactly_once_reference(rates: Mapping[str, float]) -> str | None:
    """The `fleet_exactly_once` variant the ratios use: the only one, or the default interval's."""
    if "fleet_exactly_once" in rates:
        return "fleet_exactly_once"
    default = f"fleet_exactly_once_{DEFAULT_TRANSACTION_INTERVAL_MS}ms"
    if default in rates:
        return default
    return next((name for name in rates if name.startswith("fleet_exactly_once")), None)


def ratios(rates: Mapping[str, float]) -> list[tuple[str, str, float, float]]:
    """(numerator, denominator, ratio, target) for each target whose variants ran."""
    reference = exactly_once_reference(rates)
    found = []
    for numerator, denominator, target in RATIO_TARGETS:
        name = reference if numerator == "fleet_exactly_once" else numerator
        if name is not None and name in rates and rates.get(denominator):
            found.append((name, denominator, rates[name] / rates[denominator], target))
    return found


def paired_ratio(
    samples: Mapping[str, Sequence[float]], numerator: str, denominator: str
) -> float | None:
    """The median of `numerator / denominator` over the repeats, each run with its partner.

    The variants run in turns (every variant once per repeat), so the two runs of a repeat
    saw the same machine; on a shared VM whose speed drifts from one second to the next
    this ratio varies far less than the ratio of the two medians.
    """
    tops, bottoms = samples.get(numerator, ()), samples.get(denominator, ())
    pairs = [top / bottom for top, bottom in zip(tops, bottoms, strict=False) if bottom]
    return statistics.median(pairs) if pairs else None


TRANSACTION_COLUMNS: Final = (
    *("variant", "interval", "committed", "aborted"),
    *("mean size", "mean open", "p99 open <=", "mean commit"),
)


def print_summary(
    rates: Mapping[str, float], samples: Mapping[str, Sequence[float]] | None = None
) -> None:
    """The issue's ratios against their targets, then the exactly-once runs' transactions.

    `value` is the ratio of the medians; `paired` the median of the per-repeat ratios
    (`paired_ratio`), shown when there are several repeats. Both must reach the target.
    """
    found = ratios(rates)
    if found:
        print("\nratios (issue 13 targets)")
        rows = []
        for numerator, denominator, ratio, target in found:
            paired = paired_ratio(samples or {}, numerator, denominator)
            if paired is not None and len((samples or {})[numerator]) < 2:
                paired = None  # one repeat: the same figure as `value`
            worst = ratio if paired is None else min(ratio, paired)
            rows.append(
                [
                    f"{numerator} / {denominator}",
                    f"{ratio:.2f}",
                    "-" if paired is None else f"{paired:.2f}",
                    f">= {target:.2f}",
                    "ok" if worst >= target else "below target",
                ]
            )
        report.print_table(["ratio", "value", "paired", "target", "verdict"], rows, indent="  ")
    if transaction_figures:
        print(
            "\ntransactions (fleet exactly-once; p99 first produce to commit is the upper bound "
            "of its histogram bucket)"
        )
        report.print_table(
            TRANSACTION_COLUMNS,
            [
                [
                    name,
                    f"{figures.interval_ms}ms",
                    f"{figures.committed:,}",
                    figures.aborted,
                    f"{figures.mean_size:,.0f}",
                    f"{figures.mean_open_seconds * 1000:.1f}ms",
                    f"{figures.p99_open_seconds_bound * 1000:,.0f}ms",
                    f"{figures.mean_commit_seconds * 1000:.1f}ms",
                ]
                for name, figures in transaction_figures.items()
            ],
            indent="  ",
        )


def write_chart(rates: Mapping[str, float], path: Path, title: str) -> None:
    colours = {
        name: "#9e9e9e"
        if name.startswith("plain")
        else "#ff7f0e"
        if name.startswith("quix_streams")
        else "#d62728"
        if "@" in name
        else "#1f77b4"
        for name in rates
    }
    report.bar_chart(path, rates, title, "messages per second (higher is better)", colours)

"""`python -m bench.billing`: the options, every variant's runs, the report (see `__init__`)."""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from bench import billing, report
from bench.billing.chain import CHAIN_VARIANTS, run_chain_variant
from bench.billing.exactly_once import fleet_exactly_once, transaction_figures
from bench.billing.plain import plain_billing, plain_decode
from bench.billing.quix import QUIX_GUARANTEES, quix_reports, quix_streams
from bench.billing.summary import (
    paired_ratio,
    print_summary,
    print_table,
    ratios,
    write_chart,
)
from bench.billing.workload import PARTITIONS, Workload, cleanup, prepare
from bench.quix_env import ensure_quix_venv
from bench.revision import figures_at_revision
from harness.kafka import make_topics, unique_name
from workers.billing.definition import DEFAULT_TRANSACTION_INTERVAL_MS
from workers.common.settings import Settings

DEFAULT_CHART: Final = Path(__file__).resolve().parents[1] / "results" / "billing.png"
VARIANTS: Final = (
    "plain_decode",
    "plain_billing",
    "fleet",
    "fleet_per_message",
    "fleet_aggregated",
    "arroyo_stock",
    "fleet_stock_config",
    "quix_streams",
    "fleet_exactly_once",
    "quix_streams_exactly_once",
)


def run_variant(
    work: Workload,
    variant: str,
    profile: cProfile.Profile | None,
    created: list[str],
    transaction_interval_ms: int = DEFAULT_TRANSACTION_INTERVAL_MS,
) -> float:
    """One run of `variant`; the outcomes topic it creates is appended to `created`."""
    outcomes_topic = unique_name(f"bench-billing-out-{variant.replace('_', '-')}")
    make_topics(work.settings, outcomes_topic, partitions=PARTITIONS)
    created.append(outcomes_topic)
    if variant == "plain_decode":
        return plain_decode(work)
    if variant == "plain_billing":
        return plain_billing(work, outcomes_topic)
    if variant in QUIX_GUARANTEES:
        return quix_streams(work, outcomes_topic, variant)
    if variant.startswith("fleet_exactly_once"):
        return fleet_exactly_once(work, variant, outcomes_topic, transaction_interval_ms)
    if variant not in CHAIN_VARIANTS:
        raise ValueError(f"unknown variant {variant}")
    return run_chain_variant(work, variant, outcomes_topic, profile)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.billing",  # not `__main__.py`
        description=billing.__doc__.split("\n\n")[0] if billing.__doc__ else None,
    )
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--mix", choices=("production", "demo"), default="production")
    parser.add_argument("--repeat", type=int, default=1, help="runs per variant (median kept)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--profile", action="store_true", help="cProfile the fleet variant")
    parser.add_argument(
        "--transaction-interval-ms",
        default=str(DEFAULT_TRANSACTION_INTERVAL_MS),
        help="fleet_exactly_once's transaction interval; several (e.g. 50,100,250) run one "
        "variant each, named fleet_exactly_once_<ms>ms",
    )
    parser.add_argument("--chart", type=Path, default=DEFAULT_CHART)
    parser.add_argument(
        "--revision",
        help="also run the fleet variant as of this git revision (bench/revision.py), "
        "shown as fleet@REVISION",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # The chains run without a DLQ topic here, and log each invalid message they skip: the
    # benchmark's mix has about 0.1% of them on purpose.
    logging.getLogger("workers.billing").setLevel(logging.ERROR)
    settings = Settings.from_env()
    variants = [name for name in args.variants.split(",") if name]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants: {', '.join(sorted(unknown))}")
    intervals = [int(ms) for ms in args.transaction_interval_ms.split(",") if ms]
    if not intervals or min(intervals) < 1:
        raise SystemExit("--transaction-interval-ms: positive milliseconds, comma-separated")
    interval_of: dict[str, int] = {}
    if len(intervals) == 1:
        interval_of["fleet_exactly_once"] = intervals[0]
    elif "fleet_exactly_once" in variants:
        expanded = {f"fleet_exactly_once_{ms}ms": ms for ms in intervals}
        interval_of.update(expanded)
        at = variants.index("fleet_exactly_once")
        variants[at : at + 1] = list(expanded)
    if set(variants) & set(QUIX_GUARANTEES):
        ensure_quix_venv()  # before the input is produced: a broken install fails fast
    work = prepare(settings, args.messages, args.mix)
    profile = cProfile.Profile() if args.profile else None
    samples: dict[str, list[float]] = {name: [] for name in variants}
    created: list[str] = []
    try:
        for _ in range(args.repeat):
            for variant in variants:
                rate = run_variant(
                    work,
                    variant,
                    profile,
                    created,
                    interval_of.get(variant, DEFAULT_TRANSACTION_INTERVAL_MS),
                )
                samples[variant].append(rate)
                print(f"  {variant}: {rate:,.0f} msg/s", file=sys.stderr)
    finally:
        cleanup(work, [work.topic, *created])
    rates = {name: statistics.median(values) for name, values in samples.items()}
    if args.revision:
        before = figures_at_revision(
            args.revision,
            "bench.billing",
            [
                *("--messages", str(args.messages), "--mix", args.mix),
                *("--repeat", str(args.repeat), "--variants", "fleet"),
                *("--chart", str(args.chart.with_suffix(".revision.png"))),
            ],
            settings,
        )
        rates[f"fleet@{args.revision}"] = before["fleet_msg_per_s"]
    print_table(rates)
    print_summary(rates, samples)
    write_chart(rates, args.chart, f"billing worker, {args.messages:,} messages, {args.mix} mix")
    print(f"chart: {args.chart}")
    if profile is not None:
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(25)
        print(text.getvalue(), file=sys.stderr)
    figures: dict[str, Any] = {
        "messages": args.messages,
        "mix": args.mix,
        "repeat": args.repeat,
        **{f"{name}_msg_per_s": round(rate, 1) for name, rate in rates.items()},
    }
    if args.revision and "fleet" in rates:
        figures["revision"] = args.revision
        figures["fleet_vs_revision"] = round(rates["fleet"] / rates[f"fleet@{args.revision}"], 2)
    for stock in ("arroyo_stock", "fleet_stock_config"):
        if stock in rates and "fleet" in rates:
            figures[f"fleet_vs_{stock}"] = round(rates["fleet"] / rates[stock], 2)
    if "plain_billing" in rates and "fleet" in rates:
        figures["fleet_vs_plain_billing"] = round(rates["fleet"] / rates["plain_billing"], 2)
    if "plain_decode" in rates and "fleet" in rates:
        figures["fleet_vs_plain_decode"] = round(rates["fleet"] / rates["plain_decode"], 2)
    if "quix_streams" in rates and "fleet" in rates:
        figures["fleet_vs_quix_streams"] = round(rates["fleet"] / rates["quix_streams"], 2)
    for numerator, denominator, ratio, _ in ratios(rates):
        figures[f"{numerator}_vs_{denominator}"] = round(ratio, 2)
        paired = paired_ratio(samples, numerator, denominator)
        if paired is not None and args.repeat > 1:
            figures[f"{numerator}_vs_{denominator}_paired"] = round(paired, 2)
    for name, transactions in transaction_figures.items():
        figures[f"{name}_transactions"] = {
            "interval_ms": transactions.interval_ms,
            "committed": transactions.committed,
            "aborted": transactions.aborted,
            "mean_size": round(transactions.mean_size, 1),
            "mean_open_s": round(transactions.mean_open_seconds, 4),
            "p99_open_s_bucket_bound": transactions.p99_open_seconds_bound,
            "mean_commit_s": round(transactions.mean_commit_seconds, 4),
        }
    for name, last_run in quix_reports.items():
        figures[f"{name}_last_run"] = last_run
    report.print_figures(figures)


if __name__ == "__main__":
    main()

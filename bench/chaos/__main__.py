"""`python -m bench.chaos [--short] [--faults F,...]`: the chaos suite (docs/chaos.md).

Brings up a stack of its own (`bench.chaos.stack`), runs one scenario per fault and prints
a table, writes the chart (`bench/results/chaos.png`) and ends with one JSON line; exits 1
when anything was lost, duplicated where it must not be, or a scenario failed.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final

from bench import report
from bench.chaos.assemble import AssembleWorkload
from bench.chaos.billing import BillingWorkload
from bench.chaos.blob import BlobWorkload
from bench.chaos.brokers import brokers_of, target_broker
from bench.chaos.faults import STREAM_FAULTS, Fault, WorkerKill, fault_named
from bench.chaos.scenario import ScenarioResult, Timing, run_scenario
from bench.chaos.stack import ChaosStack, default_kafka_libs, isolated_stack
from bench.chaos.summary import DEFAULT_CHART, figures, passed, print_table, write_chart
from bench.chaos.workload import WorkerOptions, Workload

ASSEMBLE_FAULT: Final = "assemble-kill"
ALL_FAULTS: Final = (*STREAM_FAULTS, ASSEMBLE_FAULT)
#: How long a stream may run at most (it is stopped once its scenario has recovered).
STREAM_SECONDS: Final = 1200.0

#: (full, short) defaults.
DEFAULTS: Final[dict[str, tuple[float, float]]] = {
    "billing_rate": (2000, 1000),
    "blob_rate": (200, 100),
    "assemble_rate": (2, 2),
    "warmup": (15, 5),
    "steady": (10, 4),
    "broker_hold": (20, 5),
    "pause_hold": (30, 8),
    "service_hold": (10, 3),
    "recover_timeout": (180, 90),
    "drain_timeout": (180, 90),
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--short", action="store_true", help="the short form (the test suite's)")
    parser.add_argument(
        "--faults", default=",".join(ALL_FAULTS), help=f"comma-separated: {', '.join(ALL_FAULTS)}"
    )
    parser.add_argument(
        "--brokers", type=int, choices=(1, 3), default=3, help="brokers of the chaos stack"
    )
    for name, (full, short) in DEFAULTS.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=float,
            default=None,
            help=f"default {full:g}, short {short:g}",
        )
    parser.add_argument(
        "--static-membership",
        action="store_true",
        help="workers with --group-instance-id (see docs/rebalancing.md)",
    )
    parser.add_argument("--custom-every", type=int, default=200, help="1 custom bucket in N")
    parser.add_argument("--kafka-libs", type=Path, default=None, help="jars of another stack")
    parser.add_argument("--keep-state", action="store_true", help="keep the stack's directory")
    parser.add_argument("--chart", type=Path, default=DEFAULT_CHART)
    args = parser.parse_args(argv)
    for name, (full, short) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, short if args.short else full)
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = set(args.faults) - set(ALL_FAULTS)
    if unknown:
        parser.error(f"unknown faults: {', '.join(sorted(unknown))}")
    return args


def scenario_of(
    name: str, args: argparse.Namespace, options: WorkerOptions
) -> tuple[Fault, list[Workload]]:
    if name == ASSEMBLE_FAULT:
        assemble = AssembleWorkload(options, int(args.assemble_rate), STREAM_SECONDS)
        return WorkerKill(name=ASSEMBLE_FAULT), [assemble]
    billing = BillingWorkload(options, int(args.billing_rate), STREAM_SECONDS, args.custom_every)
    blob = BlobWorkload(options, int(args.blob_rate), STREAM_SECONDS)
    fault = fault_named(name, args.broker_hold, args.pause_hold, args.service_hold)
    return fault, [billing, blob]


def run_all(
    stack: ChaosStack, args: argparse.Namespace
) -> tuple[list[ScenarioResult], dict[str, str]]:
    timing = Timing(
        warmup=args.warmup,
        steady=args.steady,
        recover_timeout=args.recover_timeout,
        drain_timeout=args.drain_timeout,
    )
    options = WorkerOptions(stack, static_membership=args.static_membership)
    brokers = brokers_of(stack)
    results: list[ScenarioResult] = []
    errors: dict[str, str] = {}
    for name in args.faults:
        started = time.monotonic()
        print(f"chaos: {name} ...", file=sys.stderr)
        try:
            fault, workloads = scenario_of(name, args, options)
            topic = workloads[0].watched()[0].topic
            result = run_scenario(
                stack, brokers, fault, workloads, timing, partial(target_broker, stack, topic)
            )
        except Exception as error:  # one broken scenario must not hide the others' figures
            traceback.print_exc(file=sys.stderr)
            errors[name] = f"{type(error).__name__}: {error}"
            continue
        results.append(result)
        print(
            f"chaos: {name} done in {time.monotonic() - started:.0f} s: "
            + "; ".join(
                f"{row.verdict.name} lost {row.verdict.lost} dup {row.verdict.duplicates}"
                for row in result.rows
            ),
            file=sys.stderr,
        )
    return results, errors


def settings_figures(args: argparse.Namespace) -> dict[str, Any]:
    shown = {name: getattr(args, name) for name in DEFAULTS}
    return {
        **shown,
        "short": args.short,
        "brokers": args.brokers,
        "static_membership": args.static_membership,
        "custom_every": args.custom_every,
    }


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # SystemExit unwinds through every `finally`: the workers and the stack are stopped.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started = time.monotonic()
    libs = args.kafka_libs or default_kafka_libs()
    with isolated_stack(args.brokers, libs, keep=args.keep_state, echo=True) as stack:
        results, errors = run_all(stack, args)
    print_table(results)
    for name, error in errors.items():
        print(f"{name}: FAILED: {error}")
    if results:
        mode = "short" if args.short else "full"
        title = (
            f"chaos suite ({mode}): messages behind the stream through each fault, "
            f"{args.brokers} broker(s); grey = fault, dotted = recovered"
        )
        write_chart(results, args.chart, title)
        print(f"chart: {args.chart}")
    print(f"suite took {time.monotonic() - started:.0f} s")
    report.print_figures(
        {
            **figures(results, errors, args.chart, settings_figures(args)),
            "seconds": round(time.monotonic() - started, 1),
        }
    )
    return 0 if passed(results) and not errors else 1


if __name__ == "__main__":
    sys.exit(main())

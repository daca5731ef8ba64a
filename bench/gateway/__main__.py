"""`python -m bench.gateway`: the options, both variants per shape, the report (see `__init__`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from bench import gateway, report
from bench.gateway import ceiling, upload
from bench.gateway.shapes import KIB, MIB, Shape, build
from bench.gateway.summary import (
    median_run,
    print_ceiling_table,
    print_gateway_table,
    print_ratios,
    target_for,
)
from bench.repeated_ratio import repeated_ratio
from workers.common.settings import Settings

#: The names `--shapes` takes, in the order the shapes run.
SHAPE_LABELS: Final = ("64k", "1m", "1m-gz")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway",  # not `__main__.py`
        description=gateway.__doc__.split("\n\n")[0] if gateway.__doc__ else None,
    )
    parser.add_argument("--requests-64k", type=int, default=64, help="4 MiB requests")
    parser.add_argument("--requests-1m", type=int, default=16, help="32 MiB requests")
    parser.add_argument("--uploaders", type=int, default=8)
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each shape and its ceiling (medians kept)"
    )
    parser.add_argument(
        "--profile", type=Path, help="record each gateway run with py-spy into this directory"
    )
    parser.add_argument("--py-spy", default="py-spy", help="the py-spy executable")
    parser.add_argument(
        "--shapes",
        default=",".join(SHAPE_LABELS),
        help=f"comma-separated subset of {','.join(SHAPE_LABELS)}",
    )
    return parser.parse_args(argv)


def profiler(args: argparse.Namespace, name: str) -> upload.Profiler | None:
    if args.profile is None:
        return None
    args.profile.mkdir(parents=True, exist_ok=True)
    output = args.profile / f"{name}.txt"

    @contextlib.contextmanager
    def record(pid: int) -> Iterator[None]:
        command = [
            *(args.py_spy, "record", "--pid", str(pid), "--output", str(output)),
            *("--format", "raw", "--native", "--threads"),
        ]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            _, errors = spy.communicate(timeout=120)
            if output.exists():
                print(f"  profile: {output}", file=sys.stderr)
            else:
                print(f"  no profile ({spy.returncode}):", file=sys.stderr)
                print(errors.decode(errors="replace")[-2000:], file=sys.stderr)

    return record


def settle_page_cache() -> None:
    """Write back dirty pages before a timed run, so neither variant pays for the other's.

    Both variants write hundreds of MiB through the broker into the page cache; once dirty
    pages pass the kernel's background threshold, writeback competes with the next run (the
    ceiling swung from 84 to 459 MB/s for 1 MiB chunks before this). `os.sync` returns once
    they are on disk, so every run starts from the same clean state.
    """
    os.sync()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.repeat < 1:
        raise SystemExit("--repeat: at least 1")
    settings = Settings.from_env()
    every_shape = {
        "64k": Shape("64 KiB", 64 * KIB, 64, args.requests_64k),
        "1m": Shape("1 MiB", MIB, 32, args.requests_1m),
        "1m-gz": Shape("1 MiB gz", MIB, 32, args.requests_1m, gzip=True),
    }
    chosen = [name.strip() for name in args.shapes.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in every_shape]
    if unknown or not chosen:
        raise SystemExit(f"--shapes: choose from {','.join(SHAPE_LABELS)}")
    shapes = [every_shape[name] for name in chosen]
    gateway_runs: dict[str, list[upload.Result]] = {shape.label: [] for shape in shapes}
    ceiling_runs: dict[str, list[ceiling.CeilingResult]] = {shape.label: [] for shape in shapes}
    for shape in shapes:
        print(f"building {shape.label} x {shape.chunks}...", file=sys.stderr, flush=True)
        work = build(shape)
        for repeat in range(args.repeat):
            name = f"{shape.label.replace(' ', '-')}-{repeat + 1}"
            for variant in ("gateway", "ceiling")[:: 1 if repeat % 2 == 0 else -1]:
                settle_page_cache()
                if variant == "gateway":
                    result = upload.run(settings, work, args.uploaders, profiler(args, name))
                    gateway_runs[shape.label].append(result)
                    rate = result.mb_per_second
                else:
                    top = ceiling.run(settings, work)
                    ceiling_runs[shape.label].append(top)
                    rate = top.mb_per_second
                print(
                    f"  {shape.label} #{repeat + 1} {variant}: {rate:.1f} MB/s",
                    file=sys.stderr,
                    flush=True,
                )
        del work
    gateways = [median_run(gateway_runs[shape.label]) for shape in shapes]
    ceilings = [median_run(ceiling_runs[shape.label]) for shape in shapes]
    ratios = [
        repeated_ratio(
            shape.label,
            [r.mb_per_second for r in gateway_runs[shape.label]],
            [r.mb_per_second for r in ceiling_runs[shape.label]],
            target_for(shape),
        )
        for shape in shapes
    ]
    if args.repeat > 1:
        print(f"median run of {args.repeat} per shape")
    print_gateway_table(gateways, args.uploaders)
    print_ceiling_table(ceilings)
    print_ratios(ratios)
    runs: list[dict[str, Any]] = []
    for r, top, ratio in zip(gateways, ceilings, ratios, strict=True):
        entry: dict[str, Any] = {
            "chunk_bytes": r.shape.chunk_size,
            "gzip": r.shape.gzip,
            "chunks_per_request": r.shape.chunks_per_request,
            "chunks": r.shape.chunks,
            "seconds": round(r.seconds, 3),
            "chunks_per_s": round(r.chunks_per_second, 1),
            "mb_per_s": round(r.mb_per_second, 2),
            "p50_request_ms": round(r.p50_seconds * 1000, 1),
            "start_rss_mib": round(r.start_rss_bytes / MIB, 1),
            "peak_rss_mib": round(r.peak_rss_bytes / MIB, 1),
            "ceiling_seconds": round(top.seconds, 3),
            "ceiling_chunks_per_s": round(top.chunks_per_second, 1),
            "ceiling_mb_per_s": round(top.mb_per_second, 2),
            "ceiling_kafka_mb_per_s": round(top.kafka_mb_per_second, 2),
            "vs_ceiling": round(ratio.ratio, 3),
            "target": ratio.target,
            "verdict": ratio.verdict,
        }
        if ratio.paired is not None:
            entry["vs_ceiling_paired"] = round(ratio.paired, 3)
            entry["mb_per_s_runs"] = [
                round(run.mb_per_second, 2) for run in gateway_runs[r.shape.label]
            ]
            entry["ceiling_mb_per_s_runs"] = [
                round(run.mb_per_second, 2) for run in ceiling_runs[r.shape.label]
            ]
        runs.append(entry)
    report.print_figures(
        {"bench": "gateway", "uploaders": args.uploaders, "repeat": args.repeat, "runs": runs}
    )


if __name__ == "__main__":
    main()

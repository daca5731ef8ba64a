"""The run's report: the gateway's table, the ceiling's, and the gateway's ratio to it per shape.

Pure except for printing: the ratios and verdicts are computed from the rates alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol, TypeVar

from bench import report
from bench.gateway.ceiling import CeilingResult
from bench.gateway.shapes import MIB, Shape
from bench.gateway.upload import Result
from bench.repeated_ratio import RepeatedRatio

#: Issue 14's target: the gateway at least half the ceiling's rate for 1 MiB chunks.
TARGET_RATIO: Final = 0.5
TARGET_CHUNK_SIZE: Final = MIB


def target_for(shape: Shape) -> float | None:
    """The target ratio of a shape: issue 14 sets one for raw 1 MiB chunks (its figures
    compare those); gzip shapes are reported without one (decompression is the gateway's
    work, the ceiling never pays it)."""
    return TARGET_RATIO if shape.chunk_size == TARGET_CHUNK_SIZE and not shape.gzip else None


class _Timed(Protocol):
    @property
    def seconds(self) -> float: ...


TimedT = TypeVar("TimedT", bound=_Timed)


def median_run(runs: Sequence[TimedT]) -> TimedT:
    """The run of median duration (the lower middle one for an even count)."""
    return sorted(runs, key=lambda run: run.seconds)[(len(runs) - 1) // 2]


GATEWAY_COLUMNS: Final = (
    *("chunks", "per req", "requests", "uploaders", "chunks/s"),
    *("MB/s", "p50 ms", "p99 ms", "RSS MiB", "peak MiB"),
)


def print_gateway_table(results: Sequence[Result], uploaders: int) -> None:
    report.print_table(
        GATEWAY_COLUMNS,
        [
            [
                r.shape.label,
                r.shape.chunks_per_request,
                r.shape.requests,
                uploaders,
                f"{r.chunks_per_second:,.0f}",
                f"{r.mb_per_second:.1f}",
                f"{r.p50_seconds * 1000:.1f}",
                f"{r.p99_seconds * 1000:.1f}",
                f"{r.start_rss_bytes / MIB:.1f}",
                f"{r.peak_rss_bytes / MIB:.1f}",
            ]
            for r in results
        ],
    )


def print_ceiling_table(results: Sequence[CeilingResult]) -> None:
    print(
        "\nceiling: one plain confluent-kafka producer, the gateway's producer settings "
        "(gateway_producer), the same chunk values, keys and headers"
    )
    report.print_table(
        ("chunks", "chunks/s", "MB/s", "Kafka MB/s"),
        [
            [
                r.shape.label,
                f"{r.chunks_per_second:,.0f}",
                f"{r.mb_per_second:.1f}",
                f"{r.kafka_mb_per_second:.1f}",
            ]
            for r in results
        ],
        indent="  ",
    )


def print_ratios(ratios: Sequence[RepeatedRatio]) -> None:
    """`value` is the ratio of the medians, `paired` the median of the per-repeat ratios
    (shown with several repeats); both must reach the target."""
    print(f"\ngateway / ceiling (issue 14 target: >= {TARGET_RATIO:.2f} for 1 MiB chunks)")
    report.print_table(
        ("chunks", "gateway MB/s", "ceiling MB/s", "value", "paired", "target", "verdict"),
        [
            [
                r.label,
                f"{r.numerator:.1f}",
                f"{r.denominator:.1f}",
                f"{r.ratio:.2f}",
                "-" if r.paired is None else f"{r.paired:.2f}",
                "-" if r.target is None else f">= {r.target:.2f}",
                r.verdict,
            ]
            for r in ratios
        ],
        indent="  ",
    )

"""The run's report: the gateway's table, the ceiling's, and the gateway's ratio to it per shape.

Pure except for printing: the ratios and verdicts are computed from the rates alone.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol, TypeVar

from bench import report
from bench.gateway.ceiling import CeilingResult
from bench.gateway.shapes import MIB, Shape
from bench.gateway.upload import Result

#: Issue 14's target: the gateway at least half the ceiling's rate for 1 MiB chunks.
TARGET_RATIO: Final = 0.5
TARGET_CHUNK_SIZE: Final = MIB


def target_for(shape: Shape) -> float | None:
    """The target ratio of a shape: issue 14 sets one for raw 1 MiB chunks (its figures
    compare those); gzip shapes are reported without one (decompression is the gateway's
    work, the ceiling never pays it)."""
    return TARGET_RATIO if shape.chunk_size == TARGET_CHUNK_SIZE and not shape.gzip else None


@dataclass(frozen=True)
class ShapeRatio:
    """The gateway's rate over the ceiling's for one shape, over one or more repeats."""

    label: str
    #: Medians over the repeats (any unit, the same for both).
    gateway: float
    ceiling: float
    #: The median of the per-repeat ratios (each gateway run over the ceiling run next to
    #: it); None with a single repeat, where it is `ratio` itself.
    paired: float | None
    target: float | None

    @property
    def ratio(self) -> float:
        return self.gateway / self.ceiling

    @property
    def worst(self) -> float:
        return self.ratio if self.paired is None else min(self.ratio, self.paired)

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        return "ok" if self.worst >= self.target else "below target"


def shape_ratio(
    label: str,
    gateway_rates: Sequence[float],
    ceiling_rates: Sequence[float],
    target: float | None,
) -> ShapeRatio:
    """`gateway_rates[i]` and `ceiling_rates[i]` ran side by side (repeat i)."""
    if not gateway_rates or len(gateway_rates) != len(ceiling_rates):
        raise ValueError("one ceiling rate per gateway rate, at least one each")
    pairs = [top / bottom for top, bottom in zip(gateway_rates, ceiling_rates, strict=True)]
    return ShapeRatio(
        label,
        statistics.median(gateway_rates),
        statistics.median(ceiling_rates),
        statistics.median(pairs) if len(pairs) > 1 else None,
        target,
    )


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


def print_ratios(ratios: Sequence[ShapeRatio]) -> None:
    """`value` is the ratio of the medians, `paired` the median of the per-repeat ratios
    (shown with several repeats); both must reach the target."""
    print(f"\ngateway / ceiling (issue 14 target: >= {TARGET_RATIO:.2f} for 1 MiB chunks)")
    report.print_table(
        ("chunks", "gateway MB/s", "ceiling MB/s", "value", "paired", "target", "verdict"),
        [
            [
                r.label,
                f"{r.gateway:.1f}",
                f"{r.ceiling:.1f}",
                f"{r.ratio:.2f}",
                "-" if r.paired is None else f"{r.paired:.2f}",
                "-" if r.target is None else f">= {r.target:.2f}",
                r.verdict,
            ]
            for r in ratios
        ],
        indent="  ",
    )

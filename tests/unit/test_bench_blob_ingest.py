"""`bench.blob_ingest`'s pure parts: turns, their ratios against issue 16's targets, and
the figures a run ends with."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.blob_ingest import (
    KIB,
    MIB,
    RunResult,
    RunSpec,
    Turn,
    figures,
    median_runs,
    target_ratios,
)
from bench.disk_ceiling import DiskCeiling


def run(mode: str, size: int, chunks_per_second: float) -> RunResult:
    spec = RunSpec(
        mode=mode,  # type: ignore[arg-type]
        chunk_size=size,
        chunks=1000,
        padding=0,
        topic="t",
        organization_id=1,
        storage_root="/tmp/x",
        max_batch_size=1000,
        max_batch_time_ms=100,
        max_batch_bytes=64 * MIB,
        decode_threads=2,
        batches_in_flight=3,
        timeout_seconds=60.0,
    )
    return RunResult(
        spec=spec,
        persisted=1000,
        new_blobs=1000,
        batches=1,
        seconds=1000 / chunks_per_second,
        validate_seconds=0.0,
        store_seconds=0.0,
        persist_seconds=0.0,
        storage_seconds=0.0,
        start_rss_bytes=0,
        cpu_seconds=(0.0, 0.0),
        page_faults=0,
        peak_rss_bytes=0,
    )


def turn(batched_4k: float, per_chunk_4k: float, batched_1m: float, per_chunk_1m: float,
         ceiling: tuple[float, float]) -> Turn:  # fmt: skip
    return Turn(
        [
            run("batched", 4 * KIB, batched_4k),
            run("per-chunk", 4 * KIB, per_chunk_4k),
            run("batched", MIB, batched_1m),
            run("per-chunk", MIB, per_chunk_1m),
        ],
        {"filesystem": [DiskCeiling(1000, 1000 / rate) for rate in ceiling]},
        [],
    )


def test_one_turn_has_plain_ratios_and_verdicts() -> None:
    found = target_ratios([turn(9000, 300, 600, 250, (9000, 11000))], "filesystem")
    assert found["ratio_4KiB_at_least_10"].ratio == pytest.approx(30.0)
    assert found["ratio_1MiB_at_least_3"].ratio == pytest.approx(2.4)
    assert found["ratio_1MiB_at_least_3"].verdict == "below target"
    # The ceiling of a turn is the mean of its two measurements.
    assert found["batched_4KiB_at_least_0.9_of_disk_ceiling"].ratio == pytest.approx(0.9)
    assert all(ratio.paired is None for ratio in found.values())


def test_several_turns_take_medians_and_pair_each_run_with_its_own_turn() -> None:
    turns = [
        turn(9000, 300, 600, 200, (10000, 10000)),
        turn(6000, 300, 900, 250, (6000, 6000)),
        turn(8000, 300, 700, 150, (9000, 9000)),
    ]
    share = target_ratios(turns, "filesystem")["batched_4KiB_at_least_0.9_of_disk_ceiling"]
    assert share.ratio == pytest.approx(8000 / 9000)
    assert share.paired == pytest.approx(0.9)  # median of 0.9, 1.0, 0.889
    assert share.verdict == "below target"  # both must reach it
    one_mib = target_ratios(turns, "filesystem")["ratio_1MiB_at_least_3"]
    assert one_mib.ratio == pytest.approx(700 / 200)
    assert one_mib.paired == pytest.approx(3.6)  # median of 3.0, 3.6, 4.67


def test_the_chart_shows_each_runs_median_turn() -> None:
    turns = [turn(9000, 300, 600, 200, (1, 1)), turn(6000, 500, 900, 250, (1, 1)),
             turn(8000, 400, 700, 150, (1, 1))]  # fmt: skip
    rates = [r.chunks_per_second for r in median_runs(turns)]
    assert rates == pytest.approx([8000, 400, 700, 200])


def test_figures_carry_every_turns_runs_and_the_targets(tmp_path: Path) -> None:
    turns = [turn(9500, 300, 700, 200, (10000, 10000)), turn(9000, 300, 800, 250, (9000, 9400))]
    result = figures(turns, tmp_path / "chart.png", "filesystem")
    assert result["turns"] == 2
    assert [(r["turn"], r["mode"]) for r in result["runs"]][:3] == [
        (1, "batched"), (1, "per-chunk"), (1, "batched"),
    ]  # fmt: skip
    assert result["targets"] == {
        "ratio_4KiB_at_least_10": True,
        "ratio_1MiB_at_least_3": True,  # medians 750 / 225 = 3.33, paired median 3.35
        "batched_4KiB_at_least_0.9_of_disk_ceiling": True,
        "batched_4KiB_at_least_5000_chunks_per_s": True,
    }
    assert result["ratio_batched_per_chunk_paired"]["1 MiB"] == pytest.approx(3.35)
    assert result["disk_ceiling_4KiB_measurements"] == [10000.0, 10000.0, 9000.0, 9400.0]


def test_a_missing_ceiling_fails_its_target_rather_than_passing_it(tmp_path: Path) -> None:
    without = Turn(turn(9000, 300, 700, 200, (1, 1)).results, {}, [])
    result = figures([without], tmp_path / "chart.png", "filesystem")
    assert result["targets"]["batched_4KiB_at_least_0.9_of_disk_ceiling"] is False
    assert result["batched_4KiB_vs_disk_ceiling"] is None

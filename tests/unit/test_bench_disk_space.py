"""`bench.disk_space`: a benchmark refuses to start when its files would fill the disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench.blob_ingest import parse_args, planned_bytes
from bench.disk_space import NotEnoughDiskSpace, check_free_space

MIB = 1024 * 1024


def test_a_run_that_fits_passes_and_reports_the_free_bytes(tmp_path: Path) -> None:
    free = check_free_space({tmp_path: MIB}, headroom=MIB)
    assert free == {tmp_path: shutil.disk_usage(tmp_path).free}


def test_a_run_larger_than_the_free_space_is_refused_with_the_figures(tmp_path: Path) -> None:
    too_much = shutil.disk_usage(tmp_path).free + 1
    with pytest.raises(NotEnoughDiskSpace, match=rf"{tmp_path} has .* GB free; this run writes"):
        check_free_space({tmp_path: too_much}, headroom=0)


def test_directories_on_one_filesystem_are_counted_together(tmp_path: Path) -> None:
    half = shutil.disk_usage(tmp_path).free // 2 + MIB
    first, second = tmp_path / "a", tmp_path / "b" / "not-made-yet"
    first.mkdir()
    check_free_space({first: half}, headroom=0)  # alone it fits
    with pytest.raises(NotEnoughDiskSpace, match="--keep-files"):
        check_free_space({first: half, second: half}, headroom=0)


def test_the_headroom_is_kept_free(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(NotEnoughDiskSpace):
        check_free_space({tmp_path: MIB}, headroom=free)


def test_blob_ingest_plans_its_events_twice_and_its_ceiling_files_once(tmp_path: Path) -> None:
    args = parse_args(
        [
            "--scratch-dir", str(tmp_path), "--chunks-4k", "0", "--per-chunk-4k", "0",
            "--chunks-1m", "10", "--per-chunk-1m", "0",
            "--disk-ceiling-files", "0", "--disk-ceiling-files-1m", "3",
        ]
    )  # fmt: skip
    state_dir = tmp_path / "state"
    planned = planned_bytes(args, [("batched", MIB, 10)], {MIB: 2}, state_dir)
    events = 12 * MIB
    # 3 batched and 1 one-at-a-time ceiling file of 1 MiB, before and after the run.
    assert planned == {tmp_path: events + 2 * 4 * MIB, state_dir: events}

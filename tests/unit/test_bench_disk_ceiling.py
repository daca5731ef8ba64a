"""`bench.disk_ceiling`: the files it writes and how its rates are pooled."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.disk_ceiling import (
    DiskCeiling,
    measure_disk_ceiling,
    measure_large_file_ratio,
    pooled_ceiling,
)


@pytest.mark.parametrize("method", ["file", "filesystem"])
def test_every_file_is_written_whole(tmp_path: Path, method: str) -> None:
    ceiling = measure_disk_ceiling(tmp_path, 4096, 25, method, batch=10)  # type: ignore[arg-type]
    (directory,) = tmp_path.iterdir()
    sizes = sorted(f.stat().st_size for f in directory.iterdir())
    assert sizes == [4096] * 25
    assert len({f.read_bytes() for f in directory.iterdir()}) == 25  # all distinct
    assert (ceiling.files, ceiling.file_bytes) == (25, 4096)


def test_large_files_are_measured_batched_and_one_at_a_time(tmp_path: Path) -> None:
    size = 1024 * 1024
    batched, one_by_one = measure_large_file_ratio(tmp_path, size, 9, "filesystem", batch=4)
    assert (batched.files, one_by_one.files) == (9, 3)
    written = sorted(
        (len(list(directory.iterdir())), {f.stat().st_size for f in directory.iterdir()})
        for directory in tmp_path.iterdir()
    )
    assert written == [(3, {size}), (9, {size})]
    assert batched.mb_per_second == pytest.approx(9 * size / batched.seconds / 1e6)


def test_pooling_takes_the_mean_of_the_rates_not_files_over_seconds() -> None:
    pooled = pooled_ceiling([DiskCeiling(100, 1.0), DiskCeiling(100, 4.0)])
    assert pooled.files_per_second == pytest.approx((100 + 25) / 2)
    assert pooled.file_bytes == 4096

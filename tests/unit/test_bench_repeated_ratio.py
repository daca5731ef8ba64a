"""`bench.repeated_ratio`: a ratio over repeats, its paired form and its verdict."""

from __future__ import annotations

import pytest

from bench.repeated_ratio import repeated_ratio


def test_one_repeat_has_no_paired_ratio() -> None:
    ratio = repeated_ratio("1 MiB", [129.4], [444.7], 0.5)
    assert ratio.ratio == pytest.approx(0.291, abs=0.001)
    assert ratio.paired is None
    assert ratio.worst == ratio.ratio
    assert ratio.verdict == "below target"


def test_paired_ratio_is_the_median_of_per_repeat_ratios() -> None:
    ratio = repeated_ratio("1 MiB", [100.0, 60.0, 90.0], [200.0, 100.0, 300.0], 0.5)
    assert ratio.numerator == 90.0
    assert ratio.denominator == 200.0
    assert ratio.ratio == pytest.approx(0.45)
    assert ratio.paired == pytest.approx(0.5)  # median of 0.5, 0.6, 0.3
    assert ratio.worst == pytest.approx(0.45)
    assert ratio.verdict == "below target"


def test_both_ratios_must_reach_the_target() -> None:
    assert repeated_ratio("1 MiB", [60.0, 50.0], [100.0, 100.0], 0.5).verdict == "ok"
    assert repeated_ratio("1 MiB", [50.0, 50.0], [100.0, 100.0], 0.5).verdict == "ok"
    assert repeated_ratio("1 MiB", [49.0, 60.0], [100.0, 200.0], 0.5).verdict == "below target"


def test_a_ratio_without_target_has_no_verdict() -> None:
    assert repeated_ratio("64 KiB", [1.0], [10.0], None).verdict == "-"


@pytest.mark.parametrize(
    ("numerators", "denominators"), [([1.0], []), ([], []), ([1.0], [1.0, 2.0])]
)
def test_rates_must_pair_up(numerators: list[float], denominators: list[float]) -> None:
    with pytest.raises(ValueError, match="one denominator per numerator"):
        repeated_ratio("x", numerators, denominators, None)

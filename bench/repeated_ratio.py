"""One rate over another, measured side by side in one or more repeats, and its verdict.

`value` is the ratio of the two medians; `paired` the median of the per-repeat ratios (each
run over its partner in the same repeat), which on a VM whose speed drifts from one minute
to the next varies far less. With several repeats both must reach the target.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class RepeatedRatio:
    label: str
    #: Medians over the repeats (any unit, the same for both).
    numerator: float
    denominator: float
    #: The median of the per-repeat ratios; None with a single repeat, where it is `ratio`.
    paired: float | None
    target: float | None

    @property
    def ratio(self) -> float:
        return self.numerator / self.denominator

    @property
    def worst(self) -> float:
        return self.ratio if self.paired is None else min(self.ratio, self.paired)

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        return "ok" if self.worst >= self.target else "below target"


def repeated_ratio(
    label: str,
    numerators: Sequence[float],
    denominators: Sequence[float],
    target: float | None,
) -> RepeatedRatio:
    """`numerators[i]` and `denominators[i]` ran side by side (repeat i)."""
    if not numerators or len(numerators) != len(denominators):
        raise ValueError("one denominator per numerator, at least one each")
    pairs = [top / bottom for top, bottom in zip(numerators, denominators, strict=True)]
    return RepeatedRatio(
        label,
        statistics.median(numerators),
        statistics.median(denominators),
        statistics.median(pairs) if len(pairs) > 1 else None,
        target,
    )

"""Which buckets bill, in which data category, and for what quantity.

The rule is docs/reference.md, Billing outcomes.

Only two metric ids bill by default:

- `9223372036854775945` (`c:transactions/usage@none`) → TRANSACTION (2)
- `9223372036854776226` (`c:spans/usage@none`) → SPAN (12)

`billable_quantity` is the quantity rule: `int(value)` of a scalar counter value (`int`
truncates: 2.9 → 2; 1e30 becomes the exact integer value of that double,
1000000000000000019884624838656, as in the reference), and 0, which bills nothing, for
anything below 1. A list or object value bills nothing. The map is configurable
(`BillingCounter(categories)`, or the worker's `--billable-metric METRIC_ID=CATEGORY`
option). `TranslateOutcomes` looks the category up in `BillingCounter.categories` and calls
`billable_quantity` for the buckets of billable metrics only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum
from types import MappingProxyType
from typing import Final

from workers.billing.message import U64_LIMIT


class DataCategory(IntEnum):
    """The Relay/Sentry data categories the billing worker emits."""

    TRANSACTION = 2
    SPAN = 12


TRANSACTIONS_USAGE_METRIC_ID: Final = 9223372036854775945  # c:transactions/usage@none
SPANS_USAGE_METRIC_ID: Final = 9223372036854776226  # c:spans/usage@none

DEFAULT_BILLABLE_METRICS: Final[Mapping[int, int]] = MappingProxyType(
    {
        TRANSACTIONS_USAGE_METRIC_ID: DataCategory.TRANSACTION.value,
        SPANS_USAGE_METRIC_ID: DataCategory.SPAN.value,
    }
)


def billable_quantity(counter: int | float) -> int:
    """The quantity a scalar counter value bills: truncated toward zero; 0 bills nothing."""
    quantity = int(counter)
    return quantity if quantity >= 1 else 0


class BillingCounter:
    """Which metric ids bill, and in which data category (validated)."""

    __slots__ = ("_categories",)

    def __init__(self, categories: Mapping[int, int] = DEFAULT_BILLABLE_METRICS) -> None:
        for metric_id, category in categories.items():
            if not 0 <= metric_id < U64_LIMIT:
                raise ValueError(f"metric id {metric_id} is not in [0, 2**64)")
            if category < 0:
                raise ValueError(f"data category {category} is negative")
        # A plain dict: the fastest lookup on the hot path.
        self._categories: dict[int, int] = {int(k): int(v) for k, v in categories.items()}

    @property
    def categories(self) -> Mapping[int, int]:
        return MappingProxyType(self._categories)


def parse_billable_metrics(specs: Iterable[str]) -> dict[int, int]:
    """Parse `METRIC_ID=CATEGORY` strings (category by number or by name, e.g. `span`)."""
    parsed: dict[int, int] = {}
    for spec in specs:
        metric_text, sep, category_text = spec.partition("=")
        if not sep:
            raise ValueError(f"expected METRIC_ID=CATEGORY, got {spec!r}")
        try:
            metric_id = int(metric_text.strip())
        except ValueError:
            raise ValueError(f"metric id in {spec!r} is not an integer") from None
        category_text = category_text.strip()
        if category_text.isdigit():
            category = int(category_text)
        else:
            try:
                category = DataCategory[category_text.upper()].value
            except KeyError:
                raise ValueError(
                    f"category in {spec!r} is neither a number nor one of "
                    f"{', '.join(c.name.lower() for c in DataCategory)}"
                ) from None
        if not 0 <= metric_id < U64_LIMIT:
            raise ValueError(f"metric id in {spec!r} is not in [0, 2**64)")
        parsed[metric_id] = category
    return parsed

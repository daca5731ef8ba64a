"""Which buckets bill, in which data category, and for what quantity (SPEC §4).

Only two metric ids bill by default:

- `9223372036854775945` (`c:transactions/usage@none`) → TRANSACTION (2)
- `9223372036854776226` (`c:spans/usage@none`) → SPAN (12)

`quantity = max(int(value), 0)` for a scalar counter value (`int` truncates: 2.9 → 2; 1e30
becomes the exact integer value of that double, 1000000000000000019884624838656, as in the
reference); a list or object value yields nothing
and so does a quantity below 1. The map is configurable (`BillingCounter(categories)`, or the
worker's `--billable-metric METRIC_ID=CATEGORY` option).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum
from functools import partial
from types import MappingProxyType
from typing import Final, NamedTuple

from workers.billing.message import U64_LIMIT, MetricBucket


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


class BillableOutcome(NamedTuple):
    """What one accepted outcome says: `quantity` items of `category` for a project."""

    org_id: int
    project_id: int
    category: int
    quantity: int


# Cheaper than `BillableOutcome(...)`, whose `__new__` is a Python function.
_new_outcome: Final = partial(tuple.__new__, BillableOutcome)


class BillingCounter:
    """Turns a validated bucket into at most one billable outcome."""

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

    def count(self, bucket: MetricBucket) -> BillableOutcome | None:
        category = self._categories.get(bucket.metric_id)
        if category is None:
            return None
        counter = bucket.counter
        if counter is None:
            return None
        quantity = int(counter)
        if quantity < 1:
            return None
        return _new_outcome((bucket.org_id, bucket.project_id, category, quantity))


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

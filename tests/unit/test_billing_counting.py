"""Which buckets bill and for what quantity: `counting`'s rule, as `TranslateOutcomes` applies it.

Every bucket goes through the shipped chain step (`Translator` in tests/support), so what is
tested is what bills.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.billing_fakes import Translator, decoded_outcomes
from workers.billing.counting import (
    DEFAULT_BILLABLE_METRICS,
    SPANS_USAGE_METRIC_ID,
    TRANSACTIONS_USAGE_METRIC_ID,
    BillingCounter,
    DataCategory,
    billable_quantity,
    parse_billable_metrics,
)

TX = TRANSACTIONS_USAGE_METRIC_ID
SPANS = SPANS_USAGE_METRIC_ID


def _message(metric_id: int, value: Any, metric_type: str = "c", **extra: Any) -> bytes:
    data: dict[str, Any] = {
        "org_id": extra.get("org_id", 1),
        "project_id": extra.get("project_id", 3),
        "metric_id": metric_id,
        "type": metric_type,
        "value": value,
        "timestamp": 1704614940,
        "use_case_id": "transactions",
        "mapping_meta": {},
        "tags": {},
        "retention_days": 90,
    }
    return orjson.dumps(data)


Outcome = tuple[int, int, int, int]


def _count(raw: bytes, categories: Mapping[int, int] = DEFAULT_BILLABLE_METRICS) -> Outcome | None:
    """(org, project, category, quantity) of the one outcome `raw` yields, or None."""
    batch = Translator(categories).batch([raw])
    assert not batch.dead_letters
    found = [
        (o["org_id"], o["project_id"], o["category"], o["quantity"])
        for o in decoded_outcomes(batch)
    ]
    assert len(found) <= 1
    return found[0] if found else None


def test_default_map() -> None:
    assert dict(DEFAULT_BILLABLE_METRICS) == {
        9223372036854775945: 2,
        9223372036854776226: 12,
    }
    assert DataCategory.TRANSACTION.value == 2
    assert DataCategory.SPAN.value == 12


@pytest.mark.parametrize(
    ("value", "quantity"),
    [
        (7, 7),
        (7.0, 7),
        (2.9, 2),
        (1.0, 1),
        (1.999999, 1),
        (1e30, int(1e30)),
        (2**64 - 1, 2**64 - 1),
    ],
)
def test_quantity_truncates(value: float, quantity: int) -> None:
    assert _count(_message(TX, value)) == (1, 3, 2, quantity)
    assert billable_quantity(value) == quantity
    assert type(billable_quantity(value)) is int


def test_huge_value_is_an_exact_int() -> None:
    outcome = _count(_message(SPANS, 1e30))
    assert outcome is not None
    assert outcome[3] == 1000000000000000019884624838656


@pytest.mark.parametrize("value", [0, 0.0, 0.99, -0.5, -1, -7.0, -1e30])
def test_quantity_below_one_yields_nothing(value: float) -> None:
    assert _count(_message(TX, value)) is None
    assert billable_quantity(value) == 0


def test_spans_and_transactions() -> None:
    assert _count(_message(TX, 3)) == (1, 3, DataCategory.TRANSACTION, 3)
    assert _count(_message(SPANS, 3)) == (1, 3, DataCategory.SPAN, 3)


@pytest.mark.parametrize("metric_id", [0, 1, 65563, TX - 1, SPANS + 1, 2**64 - 1])
def test_other_metric_ids_yield_nothing(metric_id: int) -> None:
    assert _count(_message(metric_id, 5.0)) is None


@pytest.mark.parametrize(
    "value",
    [
        [1.0, 2.0],
        [],
        {"format": "array", "data": [3.0]},
        {"format": "base64", "data": "AAAAAAAACEA"},
        {"min": 1.0, "max": 2.0, "sum": 3.0, "count": 2, "last": 1.0},
    ],
)
def test_list_and_object_values_yield_nothing(value: Any) -> None:
    assert _count(_message(TX, value)) is None
    assert _count(_message(SPANS, value, metric_type="d")) is None


def test_configurable_map() -> None:
    assert _count(_message(42, 5), {42: 7}) == (1, 3, 7, 5)
    assert _count(_message(TX, 5), {42: 7}) is None
    assert BillingCounter({42: 7}).categories == {42: 7}


def test_invalid_maps_are_refused() -> None:
    with pytest.raises(ValueError, match="not in"):
        BillingCounter({2**64: 2})
    with pytest.raises(ValueError, match="negative"):
        BillingCounter({1: -1})


def test_parse_billable_metrics() -> None:
    assert parse_billable_metrics(["9223372036854775945=2", " 5 = span ", "6=Transaction"]) == {
        TX: 2,
        5: 12,
        6: 2,
    }
    assert parse_billable_metrics([]) == {}
    for bad, why in [
        ("5", "expected METRIC_ID=CATEGORY"),
        ("x=2", "not an integer"),
        ("5=profile", "neither a number"),
        ("-1=2", "not in"),
        (f"{2**64}=2", "not in"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_billable_metrics([bad])


counter_values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)
metric_ids = st.one_of(
    st.sampled_from([TX, SPANS]),
    st.integers(min_value=0, max_value=2**64 - 1),
)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
buckets = st.tuples(st.integers(0, 3), st.integers(0, 3), metric_ids, counter_values)


@settings(max_examples=200, deadline=None)
@given(st.lists(buckets, max_size=40), u64, u64)
def test_outcome_totals_equal_the_expected_sum(
    specs: list[tuple[int, int, int, float]], org_base: int, project_base: int
) -> None:
    expected: Counter[tuple[int, int, int]] = Counter()
    raws = []
    for org_offset, project_offset, metric_id, value in specs:
        org_id = (org_base + org_offset) % 2**64
        project_id = (project_base + project_offset) % 2**64
        raws.append(_message(metric_id, value, org_id=org_id, project_id=project_id))
        category = DEFAULT_BILLABLE_METRICS.get(metric_id)
        if category is not None and max(int(value), 0) >= 1:
            expected[(org_id, project_id, category)] += max(int(value), 0)
    produced: Counter[tuple[int, int, int]] = Counter()
    if raws:
        # One run through the shipped step: what it bills is what is produced.
        for outcome in decoded_outcomes(Translator().batch(raws)):
            assert outcome["quantity"] >= 1
            produced[(outcome["org_id"], outcome["project_id"], outcome["category"])] += outcome[
                "quantity"
            ]
    assert produced == expected

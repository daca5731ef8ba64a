"""The exact bytes of accepted outcomes (workers.billing.outcome)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sentry_kafka_schemas import get_codec

from workers.billing.outcome import OutcomeEncoder, format_timestamp

REFERENCE_LINE = (
    b'{"timestamp":"2024-01-07T08:09:00.000000Z","org_id":1,"project_id":3,"key_id":null,'
    b'"outcome":0,"reason":null,"event_id":null,"category":2,"quantity":7}'
)
REFERENCE_SECOND_NS = 1_704_614_940 * 10**9  # 2024-01-07T08:09:00Z


def test_spec_example_bytes_exactly() -> None:
    encoder = OutcomeEncoder(lambda: REFERENCE_SECOND_NS)
    assert encoder.encode(1, 3, 2, 7) == REFERENCE_LINE
    assert encoder.encode(1, 3, 2, 7) == REFERENCE_LINE  # from the cached second


def test_key_order_and_compactness() -> None:
    line = OutcomeEncoder(lambda: REFERENCE_SECOND_NS).encode(1, 3, 12, 5)
    assert b" " not in line
    assert list(json.loads(line)) == [
        "timestamp",
        "org_id",
        "project_id",
        "key_id",
        "outcome",
        "reason",
        "event_id",
        "category",
        "quantity",
    ]


def test_outcomes_validate_with_the_outcomes_codec() -> None:
    codec = get_codec("outcomes")
    encoder = OutcomeEncoder()
    for org_id, project_id, category, quantity in [
        (1, 3, 2, 7),
        (2**64 - 1, 2**63 + 5, 12, 1),
        (0, 0, 2, 10**30),
    ]:
        line = encoder.encode(org_id, project_id, category, quantity)
        decoded = codec.decode(line, validate=True)
        assert decoded["outcome"] == 0
        assert decoded["key_id"] is None
        assert decoded["reason"] is None
        assert decoded["event_id"] is None
        assert json.loads(line)["quantity"] == quantity
    codec.decode(REFERENCE_LINE, validate=True)


@pytest.mark.parametrize(
    ("epoch_ns", "text"),
    [
        (REFERENCE_SECOND_NS, "2024-01-07T08:09:00.000000Z"),
        (REFERENCE_SECOND_NS + 1_000, "2024-01-07T08:09:00.000001Z"),
        (REFERENCE_SECOND_NS + 999, "2024-01-07T08:09:00.000000Z"),  # truncated, not rounded
        (REFERENCE_SECOND_NS + 999_999_999, "2024-01-07T08:09:00.999999Z"),
        (0, "1970-01-01T00:00:00.000000Z"),
        (951_782_400 * 10**9 + 123_456_000, "2000-02-29T00:00:00.123456Z"),
    ],
)
def test_timestamps(epoch_ns: int, text: str) -> None:
    assert format_timestamp(epoch_ns) == text
    line = OutcomeEncoder(lambda: epoch_ns).encode(1, 2, 3, 4)
    assert json.loads(line)["timestamp"] == text


def test_cached_second_is_refreshed() -> None:
    now = [REFERENCE_SECOND_NS + 500_000_000]
    encoder = OutcomeEncoder(lambda: now[0])
    assert json.loads(encoder.encode(1, 1, 2, 1))["timestamp"] == "2024-01-07T08:09:00.500000Z"
    now[0] += 600_000_000
    assert json.loads(encoder.encode(1, 1, 2, 1))["timestamp"] == "2024-01-07T08:09:01.100000Z"
    now[0] -= 2 * 10**9  # a clock step backwards is formatted correctly too
    assert json.loads(encoder.encode(1, 1, 2, 1))["timestamp"] == "2024-01-07T08:08:59.100000Z"


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=253_402_300_799_999_999_999))  # up to 9999-12-31
def test_timestamp_matches_datetime_strftime(epoch_ns: int) -> None:
    seconds, micros = divmod(epoch_ns // 1000, 1_000_000)
    expected = (
        datetime.fromtimestamp(seconds, UTC)
        .replace(microsecond=micros)
        .strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    )
    encoder = OutcomeEncoder(lambda: epoch_ns)
    assert json.loads(encoder.encode(1, 2, 3, 4))["timestamp"] == expected
    assert format_timestamp(epoch_ns) == expected


def test_default_clock_is_processing_time() -> None:
    before = datetime.now(UTC)
    stamp = json.loads(OutcomeEncoder().encode(1, 2, 3, 4))["timestamp"]
    after = datetime.now(UTC)
    moment = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before.replace(microsecond=0) <= moment <= after

"""Both snowflake layouts: the test vector of docs/reference.md, Snowflake ids,
round trips, validation, layout detection."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.common.snowflake import (
    InvalidSnowflakeId,
    LeasedIdParts,
    SentryIdParts,
    SnowflakeLayout,
    decode_leased_id,
    decode_sentry_id,
    decode_snowflake_id,
    detect_layout,
    encode_leased_id,
    encode_sentry_id,
)
from workers.common.snowflake.leased_layout import LEASED_EPOCH_MS, MIN_OFFSET_MS
from workers.common.snowflake.sentry_layout import SENTRY_EPOCH_SECONDS

TEST_VECTOR = 4506493067984915
NEW_YEAR_2024 = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp())

sentry_seconds = st.integers(SENTRY_EPOCH_SECONDS, SENTRY_EPOCH_SECONDS + 2**32 - 1)
regions = st.integers(0, 4095)
sentry_sequences = st.integers(0, 15)
leased_ms = st.integers(LEASED_EPOCH_MS + 2**31, LEASED_EPOCH_MS + 2**41 - 1)
worker_ids = st.integers(0, 1023)
leased_sequences = st.integers(0, 4095)


def test_spec_vector_encodes_and_decodes() -> None:
    assert NEW_YEAR_2024 - SENTRY_EPOCH_SECONDS == 44150400
    assert encode_sentry_id(NEW_YEAR_2024, region=1, sequence=3) == TEST_VECTOR
    assert decode_sentry_id(TEST_VECTOR) == SentryIdParts(
        timestamp=datetime(2024, 1, 1, tzinfo=UTC), region=1, sequence=3
    )


def test_region_zero_sequence_zero_is_version_plus_shifted_seconds() -> None:
    t = NEW_YEAR_2024 - SENTRY_EPOCH_SECONDS
    assert encode_sentry_id(NEW_YEAR_2024, 0, 0) == (16 << 48) + (t << 16)


@given(sentry_seconds, regions, sentry_sequences)
def test_sentry_ids_round_trip(unix_seconds: int, region: int, sequence: int) -> None:
    snowflake_id = encode_sentry_id(unix_seconds, region, sequence)
    assert 0 < snowflake_id < 2**53
    assert snowflake_id >> 48 == 16
    parts = decode_sentry_id(snowflake_id)
    assert (parts.unix_seconds, parts.region, parts.sequence) == (unix_seconds, region, sequence)
    assert parts.timestamp.tzinfo is UTC
    assert detect_layout(snowflake_id) is SnowflakeLayout.SENTRY
    assert decode_snowflake_id(snowflake_id) == parts


@given(leased_ms, worker_ids, leased_sequences)
def test_leased_ids_round_trip(unix_ms: int, worker_id: int, sequence: int) -> None:
    snowflake_id = encode_leased_id(unix_ms, worker_id, sequence)
    assert 2**53 <= snowflake_id < 2**63
    parts = decode_leased_id(snowflake_id)
    assert (parts.unix_ms, parts.worker_id, parts.sequence) == (unix_ms, worker_id, sequence)
    assert parts.timestamp.tzinfo is UTC
    assert detect_layout(snowflake_id) is SnowflakeLayout.BLOB
    assert decode_snowflake_id(snowflake_id) == parts


@given(
    st.tuples(leased_ms, worker_ids, leased_sequences),
    st.tuples(leased_ms, worker_ids, leased_sequences),
)
def test_leased_ids_sort_by_time_then_worker_then_sequence(
    a: tuple[int, int, int], b: tuple[int, int, int]
) -> None:
    assert (encode_leased_id(*a) < encode_leased_id(*b)) == (a < b)


@given(st.integers(1, 2**63 - 1))
def test_every_positive_63_bit_value_is_one_layout_or_rejected_clearly(value: int) -> None:
    if value < 2**53 and value >> 48 != 16:
        with pytest.raises(InvalidSnowflakeId, match=r"version bits \(48-52\)"):
            decode_snowflake_id(value)
    else:
        expected = SentryIdParts if value < 2**53 else LeasedIdParts
        assert isinstance(decode_snowflake_id(value), expected)


def test_the_first_blob_id_is_two_to_the_53() -> None:
    first = encode_leased_id(LEASED_EPOCH_MS + MIN_OFFSET_MS, 0, 0)
    assert first == 2**53
    assert decode_leased_id(first).timestamp == datetime(2022, 9, 1, 20, 31, 23, 648000, UTC)
    assert detect_layout(first - 1) is SnowflakeLayout.SENTRY


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "positive and below 2\\*\\*53"),
        (-5, "positive and below 2\\*\\*53"),
        (2**53, "positive and below 2\\*\\*53"),
        (17 << 48, "version bits \\(48-52\\) are 17, not 16"),
        (1, "version bits \\(48-52\\) are 0, not 16"),
    ],
)
def test_decode_sentry_rejects_other_values(value: int, message: str) -> None:
    with pytest.raises(InvalidSnowflakeId, match=message):
        decode_sentry_id(value)


@pytest.mark.parametrize("value", [0, 2**53 - 1, 2**63, -1])
def test_decode_leased_rejects_values_outside_its_range(value: int) -> None:
    with pytest.raises(InvalidSnowflakeId, match="not a blob-layout id"):
        decode_leased_id(value)


@pytest.mark.parametrize("value", [0, -1, 2**63])
def test_detect_layout_rejects_non_ids(value: int) -> None:
    with pytest.raises(InvalidSnowflakeId, match="not a snowflake id"):
        detect_layout(value)


def test_decoders_reject_non_integers() -> None:
    with pytest.raises(InvalidSnowflakeId, match="is an int, got bool"):
        decode_sentry_id(True)
    with pytest.raises(InvalidSnowflakeId, match="is an int, got str"):
        decode_leased_id("123")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((SENTRY_EPOCH_SECONDS - 1, 0, 0), "outside the Sentry layout's range"),
        ((SENTRY_EPOCH_SECONDS + 2**32, 0, 0), "outside the Sentry layout's range"),
        ((NEW_YEAR_2024, 4096, 0), "region must be an integer 0..4095, got 4096"),
        ((NEW_YEAR_2024, -1, 0), "region must be an integer 0..4095, got -1"),
        ((NEW_YEAR_2024, 0, 16), "sequence must be 0..15, got 16"),
    ],
)
def test_encode_sentry_validates(arguments: tuple[int, int, int], message: str) -> None:
    with pytest.raises(InvalidSnowflakeId, match=message):
        encode_sentry_id(*arguments)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((LEASED_EPOCH_MS + MIN_OFFSET_MS - 1, 0, 0), "outside the blob layout's range"),
        ((LEASED_EPOCH_MS + 2**41, 0, 0), "outside the blob layout's range"),
        ((NEW_YEAR_2024 * 1000, 1024, 0), "worker id must be 0..1023, got 1024"),
        ((NEW_YEAR_2024 * 1000, 0, 4096), "sequence must be 0..4095, got 4096"),
    ],
)
def test_encode_leased_validates(arguments: tuple[int, int, int], message: str) -> None:
    with pytest.raises(InvalidSnowflakeId, match=message):
        encode_leased_id(*arguments)


def test_explicit_layout_overrides_detection() -> None:
    with pytest.raises(InvalidSnowflakeId, match="not a blob-layout id"):
        decode_snowflake_id(TEST_VECTOR, SnowflakeLayout.BLOB)

"""Decoding and validation of `snuba-generic-metrics` messages (workers.billing.message)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sentry_kafka_schemas import get_codec, iter_examples

from workers.billing import message as m
from workers.billing.message import BucketError, parse_bucket
from workers.billing.traffic import sample_traffic

SECRET = "S3CRET-PAYLOAD-MARKER"


def _valid(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "version": 2,
        "use_case_id": "transactions",
        "org_id": 1,
        "project_id": 3,
        "metric_id": 9223372036854775945,
        "timestamp": 1704614940,
        "tags": {"9223372036854776010": "production"},
        "retention_days": 90,
        "mapping_meta": {"c": {"9223372036854775945": "c:transactions/usage@none"}},
        "type": "c",
        "value": 7.0,
    }
    base.update(overrides)
    return base


def _raw(**overrides: Any) -> bytes:
    return orjson.dumps(_valid(**overrides))


def _without(field: str) -> bytes:
    data = _valid()
    del data[field]
    return orjson.dumps(data)


def _code(raw: bytes) -> str:
    with pytest.raises(BucketError) as info:
        parse_bucket(raw)
    return info.value.code


def test_every_bundled_example_is_accepted() -> None:
    examples = list(iter_examples("snuba-generic-metrics"))
    assert len(examples) == 8
    codec = get_codec("snuba-generic-metrics")
    for example in examples:
        raw = orjson.dumps(example.load())
        codec.decode(raw, validate=True)  # the examples are schema-valid...
        bucket = parse_bucket(raw)  # ...and so accepted by the hand validation
        data = example.load()
        assert bucket.org_id == data["org_id"]
        assert bucket.project_id == data["project_id"]
        assert bucket.metric_id == data["metric_id"]
        assert bucket.type == data["type"]
        assert bucket.mapping_meta == data["mapping_meta"]
        if data["type"] == "c":
            assert bucket.counter == data["value"]
        else:
            assert bucket.counter is None


def test_counter_bucket_fields() -> None:
    bucket = parse_bucket(_raw(value=2.9))
    assert bucket.counter == 2.9
    assert bucket.metric_id == 9223372036854775945
    assert bucket.use_case_id == "transactions"
    assert bucket.timestamp == 1704614940


@pytest.mark.parametrize(
    "value",
    [
        [1.0, 2.5, 3],
        [],
        {"format": "array", "data": [0.0, 1.1, 2.2]},
        {"format": "array", "data": [0, 1, 2]},
        {"format": "base64", "data": "AAAAAAAACEAAAAAAAADwPwAAAAAAAABA"},
        {"format": "base64", "data": "AQAAAAcAAAA"},  # no padding (real payloads do this)
        {"format": "base64", "data": "AQAAAAcAAAA="},
        {"format": "zstd", "data": "KLUv/QBYQQAAAQAAAAcAAAA"},
        {"min": 1.0, "max": 2.0, "sum": 3.0, "count": 2, "last": 1},
    ],
)
def test_non_scalar_values_are_accepted_and_never_counters(value: Any) -> None:
    for metric_type in ("c", "d", "s", "g"):
        bucket = parse_bucket(_raw(type=metric_type, value=value))
        assert bucket.counter is None


def test_ids_up_to_u64_max_are_accepted() -> None:
    top = 2**64 - 1
    bucket = parse_bucket(_raw(org_id=top, project_id=top, metric_id=top, timestamp=0))
    assert (bucket.org_id, bucket.project_id, bucket.metric_id) == (top, top, top)


def test_mapping_meta_is_optional() -> None:
    assert parse_bucket(_without("mapping_meta")).mapping_meta == {}


def test_integer_counter_and_negative_counter_are_accepted() -> None:
    assert parse_bucket(_raw(value=5)).counter == 5
    assert parse_bucket(_raw(value=-3.5)).counter == -3.5


GAUGE = {"min": 1, "max": 2, "sum": 3, "count": 2, "last": 1}
TX_ID = b"9223372036854775945,"
INT64_MIN = b"-9223372036854775808"


def _value(metric_type: str, value: Any) -> bytes:
    return _raw(type=metric_type, value=value)


def _encoded(value_format: Any, data: Any) -> bytes:
    return _raw(type="d", value={"format": value_format, "data": data})


BAD_INPUTS: list[tuple[str, bytes, str]] = [
    ("truncated", b'{"org_id": 1, "SECRET', m.INVALID_JSON),
    ("empty", b"", m.INVALID_JSON),
    ("not utf-8", b'{"a": "\xff\xfe"}', m.INVALID_JSON),
    ("NaN literal", _raw().replace(b'"value":7.0', b'"value":NaN'), m.INVALID_JSON),
    ("overflowing float", _raw().replace(b'"value":7.0', b'"value":1e400'), m.INVALID_JSON),
    ("array", b"[1, 2, 3]", m.NOT_AN_OBJECT),
    ("string", b'"S3CRET"', m.NOT_AN_OBJECT),
    ("null", b"null", m.NOT_AN_OBJECT),
    ("missing org_id", _without("org_id"), m.MISSING_FIELD),
    ("missing project_id", _without("project_id"), m.MISSING_FIELD),
    ("missing metric_id", _without("metric_id"), m.MISSING_FIELD),
    ("missing type", _without("type"), m.MISSING_FIELD),
    ("missing value", _without("value"), m.MISSING_FIELD),
    ("missing timestamp", _without("timestamp"), m.MISSING_FIELD),
    ("missing use_case_id", _without("use_case_id"), m.MISSING_FIELD),
    ("org_id string", _raw(org_id=SECRET), m.WRONG_TYPE),
    ("org_id bool", _raw(org_id=True), m.WRONG_TYPE),
    ("project_id float", _raw(project_id=1.5), m.WRONG_TYPE),
    ("metric_id null", _raw(metric_id=None), m.WRONG_TYPE),
    ("org_id negative", _raw(org_id=-1), m.ID_OUT_OF_RANGE),
    ("metric_id 2**64", _raw().replace(TX_ID, b"18446744073709551616,", 1), m.ID_OUT_OF_RANGE),
    (
        "project_id below int64",
        _raw(project_id=-(2**63)).replace(INT64_MIN, b"-9223372036854775809"),
        m.ID_OUT_OF_RANGE,
    ),
    ("timestamp negative", _raw(timestamp=-1), m.TIMESTAMP_OUT_OF_RANGE),
    ("timestamp float", _raw(timestamp=1704614940.5), m.WRONG_TYPE),
    ("timestamp string", _raw(timestamp="2024-01-07"), m.WRONG_TYPE),
    ("type number", _raw(type=1), m.WRONG_TYPE),
    ("type unknown", _raw(type="x"), m.UNKNOWN_METRIC_TYPE),
    ("use_case_id number", _raw(use_case_id=7), m.WRONG_TYPE),
    ("mapping_meta list", _raw(mapping_meta=[SECRET]), m.WRONG_TYPE),
    ("mapping_meta null", _raw(mapping_meta=None), m.WRONG_TYPE),
    ("counter string", _raw(value=SECRET), m.NON_NUMERIC_COUNTER),
    ("counter numeric string", _raw(value="7"), m.NON_NUMERIC_COUNTER),
    ("counter bool", _raw(value=True), m.NON_NUMERIC_COUNTER),
    ("counter null", _raw(value=None), m.NON_NUMERIC_COUNTER),
    ("distribution scalar", _value("d", 7.0), m.TYPE_VALUE_MISMATCH),
    ("set scalar", _value("s", 7), m.TYPE_VALUE_MISMATCH),
    ("gauge scalar", _value("g", 7), m.TYPE_VALUE_MISMATCH),
    ("distribution string", _value("d", SECRET), m.WRONG_TYPE),
    ("gauge null", _value("g", None), m.WRONG_TYPE),
    ("list with string", _value("d", [1.0, SECRET]), m.WRONG_TYPE),
    ("list with bool", _value("s", [1, True]), m.WRONG_TYPE),
    ("list with null", _value("d", [None]), m.WRONG_TYPE),
    ("nested list", _value("d", [[1.0]]), m.WRONG_TYPE),
    ("format lz4", _encoded("lz4", SECRET), m.UNKNOWN_VALUE_FORMAT),
    ("format number", _encoded(1, "AAAA"), m.UNKNOWN_VALUE_FORMAT),
    ("format null", _encoded(None, "AAAA"), m.UNKNOWN_VALUE_FORMAT),
    ("array without data", _value("d", {"format": "array"}), m.MISSING_FIELD),
    ("array data string", _encoded("array", SECRET), m.WRONG_TYPE),
    ("array data strings", _encoded("array", [SECRET]), m.WRONG_TYPE),
    ("base64 data number", _encoded("base64", 5), m.WRONG_TYPE),
    ("base64 garbage", _encoded("base64", "!!" + SECRET), m.INVALID_VALUE_DATA),
    ("base64 bad length", _encoded("base64", "AAAAA"), m.INVALID_VALUE_DATA),
    ("base64 bad padding", _encoded("base64", "AAAAA="), m.INVALID_VALUE_DATA),
    ("zstd not a frame", _encoded("zstd", "AAAAAAAA"), m.INVALID_VALUE_DATA),
    ("zstd data null", _encoded("zstd", None), m.WRONG_TYPE),
    (
        "gauge missing last",
        _value("g", {k: v for k, v in GAUGE.items() if k != "last"}),
        m.MISSING_FIELD,
    ),
    ("empty object", _value("g", {}), m.MISSING_FIELD),
    ("gauge count float", _value("g", {**GAUGE, "count": 2.5}), m.WRONG_TYPE),
    ("gauge min string", _value("g", {**GAUGE, "min": SECRET}), m.WRONG_TYPE),
    ("gauge extra field", _value("g", {**GAUGE, "x": 1}), m.WRONG_TYPE),
]


@pytest.mark.parametrize(("name", "raw", "code"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_rejected_with_its_code(name: str, raw: bytes, code: str) -> None:
    with pytest.raises(BucketError) as info:
        parse_bucket(raw)
    error = info.value
    assert error.code == code
    assert code in m.REASON_CODES
    assert error.reason == f"{code}: {error.detail}"
    # The reason may name a field, never carry payload bytes.
    assert SECRET not in error.reason
    assert "S3CRET" not in error.reason


def test_missing_field_detail_names_the_field() -> None:
    for field in ("org_id", "project_id", "metric_id", "type", "value", "timestamp"):
        with pytest.raises(BucketError) as info:
            parse_bucket(_without(field))
        assert info.value.reason == f"missing_field: {field}"


def test_non_finite_counter_is_rejected_when_decoded_from_lenient_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # orjson refuses NaN/Infinity literals; if the decoder ever accepted them, the
    # validation still must.
    monkeypatch.setattr(m, "loads", lambda raw: {**_valid(), "value": float("inf")})
    assert _code(b"{}") == m.NON_NUMERIC_COUNTER
    monkeypatch.setattr(m, "loads", lambda raw: {**_valid(), "value": float("nan")})
    assert _code(b"{}") == m.NON_NUMERIC_COUNTER


# -- the fast path (msgspec) and the checked path (orjson + hand checks) agree -----------------

_ANY_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)
_OBJECT_FIELD_VALUES: st.SearchStrategy[Any] = st.sampled_from(
    [
        None,
        True,
        0,
        2,
        -1,
        2**64,
        1.5,
        "AAAA",
        "KLUv/QBYQQ",
        "AAAAA",
        "array",
        "zstd",
        [],
        [1, 2.5],
        {},
    ]
)
_OBJECT_KEYS = st.sampled_from(["format", "data", "min", "max", "sum", "count", "last", "extra"])
# Objects made of any subset of the encoded-series and gauge fields (and one more).
_VALUE_OBJECTS = st.dictionaries(_OBJECT_KEYS, _OBJECT_FIELD_VALUES)


@st.composite
def _near_value_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A valid gauge or encoded series with one field set (maybe to null) or removed."""
    value: dict[str, Any] = dict(
        draw(
            st.sampled_from(
                [GAUGE, {"format": "base64", "data": "AAAA"}, {"format": "array", "data": [1]}]
            )
        )
    )
    key = draw(_OBJECT_KEYS)
    if draw(st.booleans()):
        value.pop(key, None)
    else:
        value[key] = draw(_OBJECT_FIELD_VALUES)
    return value


_VALUES = st.one_of(
    st.integers(min_value=-(2**66), max_value=2**66),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(
        st.integers(min_value=-(2**66), max_value=2**66)
        | st.floats(allow_nan=False, allow_infinity=False),
        max_size=5,
    ),
    st.fixed_dictionaries(
        {
            "format": st.sampled_from(["array", "base64", "zstd", "lz4"]),
            "data": st.sampled_from(
                ["AAAA", "AQAAAAcAAAA", "KLUv/QBYQQ", "!!", "AAAAA", [1.0, 2], []]
            ),
        }
    ),
    st.fixed_dictionaries(
        {
            "min": st.integers(0, 5),
            "max": st.floats(0, 5),
            "sum": st.integers(0, 9),
            "count": st.integers(0, 3) | st.floats(0, 3),
            "last": st.integers(0, 5),
        }
    ),
    _VALUE_OBJECTS,
    _near_value_objects(),
    _ANY_JSON,
)
_FIELDS = (
    "org_id",
    "project_id",
    "metric_id",
    "type",
    "value",
    "timestamp",
    "use_case_id",
    "mapping_meta",
)


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    data = _valid(
        type=draw(st.sampled_from(["c", "d", "s", "g"])),
        value=draw(_VALUES),
        org_id=draw(st.sampled_from([1, 2**64 - 1, 2**63 + 5])),
        mapping_meta={
            "c": {
                "9223372036854775945": draw(
                    st.sampled_from(["c:custom/x@none", "c:transactions/usage@none"])
                )
            }
        },
        tags={"9223372036854776010": draw(st.text(max_size=6))},
    )
    for field in draw(st.lists(st.sampled_from(_FIELDS), max_size=2, unique=True)):
        if draw(st.booleans()):
            del data[field]
        else:
            data[field] = draw(_ANY_JSON)
    if draw(st.booleans()):
        data[draw(st.text(max_size=6))] = draw(_ANY_JSON)
    # The stdlib encoder writes integers of any size (orjson stops at 64 bits).
    return json.dumps(data, ensure_ascii=draw(st.booleans())).encode()


def _verdict(parse: Any, raw: bytes) -> Any:
    try:
        return ("bucket", parse(raw))
    except BucketError as error:
        return ("error", error.reason)


@settings(max_examples=3000, deadline=None)
@given(raw=_messages())
def test_fast_and_checked_paths_give_the_same_verdict(raw: bytes) -> None:
    assert _verdict(parse_bucket, raw) == _verdict(m.parse_checked, raw)


@settings(max_examples=300, deadline=None)
@given(raw=_messages(), cut=st.integers(min_value=0, max_value=600), junk=st.binary(max_size=3))
def test_paths_agree_on_damaged_bytes(raw: bytes, cut: int, junk: bytes) -> None:
    damaged = raw[:cut] + junk + raw[cut:]
    assert _verdict(parse_bucket, damaged) == _verdict(m.parse_checked, damaged)


def test_invalid_utf8_in_a_field_billing_never_reads_is_invalid_json() -> None:
    raw = _raw(tags={"9223372036854776010": "PLACEHOLDER"}).replace(b"PLACEHOLDER", b"\xff\xfe")
    assert _code(raw) == m.INVALID_JSON


def test_duplicate_keys_take_the_last_value_on_both_paths() -> None:
    raw = _raw(org_id=5).replace(b'"org_id":5', b'"org_id":4,"org_id":5')
    assert parse_bucket(raw).org_id == 5
    assert m.parse_checked(raw).org_id == 5


def test_a_double_overflow_in_a_field_billing_never_reads_is_tolerated() -> None:
    # Valid JSON that orjson alone refuses: the fast path never decodes that field.
    raw = _raw(retention_days=90).replace(b'"retention_days":90', b'"retention_days":1e400')
    assert parse_bucket(raw).counter == 7.0


def test_the_fast_path_decides_valid_traffic_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    traffic = [payload.value for payload in sample_traffic(2000, 7)]
    expected = {}
    for raw in traffic:
        with contextlib.suppress(BucketError):
            expected[raw] = m.parse_checked(raw)

    def not_expected(raw: bytes) -> m.MetricBucket:
        raise AssertionError("the checked path was asked about a valid message")

    monkeypatch.setattr(m, "parse_checked", not_expected)
    assert len(expected) > 1900
    for raw, bucket in expected.items():
        assert parse_bucket(raw) == bucket


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ({**GAUGE, "format": None}, m.UNKNOWN_VALUE_FORMAT),
        ({**GAUGE, "data": None}, m.WRONG_TYPE),
        ({**GAUGE, "data": "AAAA"}, m.WRONG_TYPE),
        ({"format": "array", "data": None}, m.WRONG_TYPE),
        ({**GAUGE, "min": None}, m.WRONG_TYPE),
    ],
)
def test_explicit_nulls_in_value_objects_are_not_taken_as_absent(value: Any, code: str) -> None:
    raw = _value("g", value)
    assert _code(raw) == code
    with pytest.raises(BucketError):
        m.parse_checked(raw)

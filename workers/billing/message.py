"""Decoding and validation of one `snuba-generic-metrics` message into a typed bucket.

The input is the JSON format of the `snuba-generic-metrics.v1` schema (docs/reference.md,
Generic-metrics input). Validating
every message with the full jsonschema codec is far too slow for the hot path, so the fields
the billing worker relies on are checked on their own:

- `org_id`, `project_id`, `metric_id`: ints (never bools) in `[0, 2**64)`: indexed ids are
  `2**63 + n`, so they do not fit an int64;
- `timestamp`: an int in `[0, 2**64)`; `type`: one of `c d s g`; `use_case_id`: a string;
  `mapping_meta`, when present, an object (read by the first-custom-metric check);
- `value`: a finite number (counters), a list of numbers, an encoded series
  `{"format": "array"|"base64"|"zstd", "data": ...}` (base64 with or without padding; zstd
  data must start with the base64 of the zstd magic number) or a gauge
  `{min, max, sum, count, last}`.

Only type `"c"` buckets can carry a scalar value. A scalar value under another type is
rejected (`type_value_mismatch`) rather than billed (the reference ignores `type` and would
bill it) or silently skipped: the billable metric ids are `c:` MRIs, so such a message is
corrupt and belongs in the DLQ where it can be inspected and replayed. A counter whose value
is a list or an object is accepted and simply yields nothing (docs/reference.md, Billing outcomes).

Two paths, one verdict. `parse_bucket` first decodes into a typed msgspec `Struct`
(`WireBucket`): msgspec checks the types of the fields it reads in C and skips the fields
billing never reads (tags, ...) without building them, about twice as fast as orjson plus
the checks in Python. A message the fast path does not accept outright (any msgspec error,
an id of 2**64 or more, a scalar under the wrong type, an integer counter outside 64 bits, a
value object that is not exactly a gauge or a well-formed series) goes to `parse_checked`,
which decodes with orjson and checks every field by hand: it is the specification of what is
valid and the only place reasons are made, so both paths give the same bucket or the same
error (a property test compares them). msgspec does not look inside the fields it skips,
which matters twice: the fast path checks that the payload is UTF-8 itself (only when it is
not ASCII), and a number too large for a double in a field billing never reads is accepted
(it is valid JSON; orjson alone refuses it).

A rejected message raises `BucketError(code, detail)`: `code` is a short fixed snake_case
identifier and `detail` names at most a field, never payload bytes. The strategy turns it
into Arroyo's `InvalidMessage(partition, offset, reason="<code>: <detail>")`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from math import isfinite
from typing import Annotated, Any, Final, Literal, NamedTuple, NoReturn

import msgspec
from msgspec import UNSET, UnsetType
from orjson import JSONDecodeError, loads

# Reason codes (the part of an InvalidMessage reason before the colon).
INVALID_JSON: Final = "invalid_json"
NOT_AN_OBJECT: Final = "not_an_object"
MISSING_FIELD: Final = "missing_field"
WRONG_TYPE: Final = "wrong_type"
ID_OUT_OF_RANGE: Final = "id_out_of_range"
TIMESTAMP_OUT_OF_RANGE: Final = "timestamp_out_of_range"
UNKNOWN_METRIC_TYPE: Final = "unknown_metric_type"
NON_NUMERIC_COUNTER: Final = "non_numeric_counter"
TYPE_VALUE_MISMATCH: Final = "type_value_mismatch"
UNKNOWN_VALUE_FORMAT: Final = "unknown_value_format"
INVALID_VALUE_DATA: Final = "invalid_value_data"

REASON_CODES: Final = frozenset(
    {
        INVALID_JSON,
        NOT_AN_OBJECT,
        MISSING_FIELD,
        WRONG_TYPE,
        ID_OUT_OF_RANGE,
        TIMESTAMP_OUT_OF_RANGE,
        UNKNOWN_METRIC_TYPE,
        NON_NUMERIC_COUNTER,
        TYPE_VALUE_MISMATCH,
        UNKNOWN_VALUE_FORMAT,
        INVALID_VALUE_DATA,
    }
)

COUNTER: Final = "c"
METRIC_TYPES: Final = frozenset({"c", "d", "s", "g"})
ENCODED_FORMATS: Final = frozenset({"array", "base64", "zstd"})
GAUGE_FIELDS: Final = ("min", "max", "sum", "count", "last")

#: Exclusive upper bound of every id and of the timestamp (unsigned 64 bit).
U64_LIMIT: Final = 1 << 64
# orjson turns integer literals outside [-2**63, 2**64) into floats: such a float id is an
# overflowing integer, not a fraction.
_INT64_MAGNITUDE: Final = float(1 << 63)

_NUMBER_TYPES: Final = frozenset({int, float})
# Standard alphabet, padding optional (some real payloads have none).
_BASE64: Final = re.compile(r"[A-Za-z0-9+/]*={0,2}")
# base64 of the zstd frame magic number 0xFD2FB528 (little endian: 28 b5 2f fd).
_ZSTD_BASE64_PREFIX: Final = "KLUv/"

_MISSING: Final[Any] = object()


class BucketError(ValueError):
    """A message that cannot be a generic-metrics bucket; `reason` is `"<code>: <detail>"`."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    @property
    def reason(self) -> str:
        return f"{self.code}: {self.detail}"

    def __str__(self) -> str:
        return self.reason


_NonNegative = Annotated[int, msgspec.Meta(ge=0)]


class _WireValueObject(msgspec.Struct, gc=False, forbid_unknown_fields=True):
    """An encoded series (`format`, `data`) or a gauge (`min` ... `last`).

    An absent field is `UNSET`; an explicit null is a decode error (the checked path decides).
    """

    format: Literal["array", "base64", "zstd"] | UnsetType = UNSET
    data: str | list[float] | UnsetType = UNSET
    min: float | UnsetType = UNSET
    max: float | UnsetType = UNSET
    sum: float | UnsetType = UNSET
    count: int | UnsetType = UNSET
    last: float | UnsetType = UNSET


class WireBucket(msgspec.Struct, gc=False):
    """The fields billing reads, as msgspec decodes them (the rest of a message is skipped)."""

    org_id: _NonNegative
    project_id: _NonNegative
    metric_id: _NonNegative
    type: Literal["c", "d", "s", "g"]
    timestamp: _NonNegative
    use_case_id: str
    # Lists and objects are checked and dropped: billing reads only scalar counters.
    value: int | float | list[float] | _WireValueObject
    mapping_meta: dict[str, dict[str, str]] = {}


_decode_wire: Final = msgspec.json.Decoder(WireBucket).decode
_INT64_MIN: Final = -(1 << 63)


class MetricBucket(NamedTuple):
    """One validated generic-metrics bucket."""

    org_id: int
    project_id: int
    metric_id: int
    type: str
    timestamp: int
    use_case_id: str
    # The scalar value of a type "c" bucket (finite int or float); None for anything else. A
    # list, encoded series or gauge is validated and dropped: billing never reads it.
    counter: int | float | None
    # `{fetch_type_letter: {"<id>": "<string>"}}`; empty when the message has none.
    mapping_meta: Mapping[str, Any]


# `MetricBucket(...)` runs a Python-level `__new__`; building the tuple directly is cheaper.
_new_bucket: Final = partial(tuple.__new__, MetricBucket)


def parse_bucket(raw: bytes) -> MetricBucket:
    """Decode and validate one message value; raises `BucketError` for anything invalid."""
    if not raw.isascii():
        try:
            raw.decode()
        except UnicodeDecodeError:
            raise BucketError(INVALID_JSON, "payload is not valid JSON") from None
    try:
        wire = _decode_wire(raw)
    except msgspec.MsgspecError:
        return parse_checked(raw)
    org_id = wire.org_id
    project_id = wire.project_id
    metric_id = wire.metric_id
    timestamp = wire.timestamp
    if (
        org_id >= U64_LIMIT
        or project_id >= U64_LIMIT
        or metric_id >= U64_LIMIT
        or timestamp >= U64_LIMIT
    ):
        return parse_checked(raw)
    metric_type = wire.type
    value = wire.value
    counter: int | float | None = None
    # msgspec never decodes a bool into these types, so isinstance is exact here.
    if isinstance(value, int):
        # Beyond 64 bits orjson (and so `parse_checked`) reads an integer as a float.
        if metric_type != COUNTER or not _INT64_MIN <= value < U64_LIMIT:
            return parse_checked(raw)
        counter = value
    elif isinstance(value, float):
        if metric_type != COUNTER or not isfinite(value):
            return parse_checked(raw)
        counter = value
    elif isinstance(value, _WireValueObject) and not _value_object_ok(value):
        return parse_checked(raw)
    return _new_bucket(
        (
            org_id,
            project_id,
            metric_id,
            metric_type,
            timestamp,
            wire.use_case_id,
            counter,
            wire.mapping_meta,
        )
    )


def _value_object_ok(value: _WireValueObject) -> bool:
    """Whether `parse_checked` accepts this object as it is (else it decides)."""
    value_format = value.format
    if value_format is UNSET:
        count = value.count
        return (
            value.data is UNSET
            and value.min is not UNSET
            and value.max is not UNSET
            and value.sum is not UNSET
            and value.last is not UNSET
            and count is not UNSET
            and _INT64_MIN <= count < U64_LIMIT
        )
    # An encoded series: fields of a gauge beside it are ignored, as `parse_checked` does.
    data = value.data
    if value_format == "array":
        return type(data) is list
    return (
        type(data) is str
        and _BASE64.fullmatch(data) is not None
        and _base64_length_ok(data)
        and (value_format != "zstd" or data.startswith(_ZSTD_BASE64_PREFIX))
    )


def parse_checked(raw: bytes) -> MetricBucket:
    """`parse_bucket` checking every field by hand after an orjson decode (and making reasons)."""
    try:
        data = loads(raw)
    except JSONDecodeError:
        raise BucketError(INVALID_JSON, "payload is not valid JSON") from None
    if type(data) is not dict:
        raise BucketError(NOT_AN_OBJECT, f"top level is {_json_type(data)}")
    try:
        org_id = data["org_id"]
        project_id = data["project_id"]
        metric_id = data["metric_id"]
        metric_type = data["type"]
        value = data["value"]
        timestamp = data["timestamp"]
        use_case_id = data["use_case_id"]
    except KeyError as missing:
        raise BucketError(MISSING_FIELD, str(missing.args[0])) from None

    if type(org_id) is not int or not 0 <= org_id < U64_LIMIT:
        _reject_id("org_id", org_id)
    if type(project_id) is not int or not 0 <= project_id < U64_LIMIT:
        _reject_id("project_id", project_id)
    if type(metric_id) is not int or not 0 <= metric_id < U64_LIMIT:
        _reject_id("metric_id", metric_id)
    if type(timestamp) is not int or not 0 <= timestamp < U64_LIMIT:
        _reject_timestamp(timestamp)
    if type(metric_type) is not str:
        raise BucketError(WRONG_TYPE, f"type must be a string, got {_json_type(metric_type)}")
    if metric_type not in METRIC_TYPES:
        raise BucketError(UNKNOWN_METRIC_TYPE, "type must be one of c, d, s, g")
    if type(use_case_id) is not str:
        raise BucketError(
            WRONG_TYPE, f"use_case_id must be a string, got {_json_type(use_case_id)}"
        )
    mapping_meta = data.get("mapping_meta", _MISSING)
    if mapping_meta is _MISSING:
        mapping_meta = {}
    elif type(mapping_meta) is not dict:
        raise BucketError(
            WRONG_TYPE, f"mapping_meta must be an object, got {_json_type(mapping_meta)}"
        )

    counter: int | float | None = None
    value_type = type(value)
    if value_type is int or value_type is float:
        if metric_type != COUNTER:
            raise BucketError(TYPE_VALUE_MISMATCH, f"value is a number but type is {metric_type!r}")
        if value_type is float and not isfinite(value):
            raise BucketError(NON_NUMERIC_COUNTER, "counter value is not finite")
        counter = value
    elif value_type is list:
        _check_numbers(value, "value")
    elif value_type is dict:
        _check_value_object(value)
    elif metric_type == COUNTER:
        raise BucketError(
            NON_NUMERIC_COUNTER, f"counter value is {_json_type(value)}, not a number"
        )
    else:
        raise BucketError(WRONG_TYPE, f"value must be a list or an object, got {_json_type(value)}")

    return _new_bucket(
        (
            org_id,
            project_id,
            metric_id,
            metric_type,
            timestamp,
            use_case_id,
            counter,
            mapping_meta,
        )
    )


def _reject_id(field: str, value: object) -> NoReturn:
    if type(value) is float and abs(value) >= _INT64_MAGNITUDE:
        raise BucketError(ID_OUT_OF_RANGE, f"{field} must be in [0, 2**64)")
    if type(value) is not int:
        raise BucketError(WRONG_TYPE, f"{field} must be an integer, got {_json_type(value)}")
    raise BucketError(ID_OUT_OF_RANGE, f"{field} must be in [0, 2**64)")


def _reject_timestamp(value: object) -> NoReturn:
    if type(value) is float and abs(value) >= _INT64_MAGNITUDE:
        raise BucketError(TIMESTAMP_OUT_OF_RANGE, "timestamp must be in [0, 2**64)")
    if type(value) is not int:
        raise BucketError(WRONG_TYPE, f"timestamp must be an integer, got {_json_type(value)}")
    raise BucketError(TIMESTAMP_OUT_OF_RANGE, "timestamp must be in [0, 2**64)")


def _check_numbers(items: list[Any], field: str) -> None:
    # `type(True)` is bool, so booleans fail this check as they should.
    if not _NUMBER_TYPES.issuperset(map(type, items)):
        raise BucketError(WRONG_TYPE, f"{field} must contain only numbers")


def _check_value_object(value: dict[str, Any]) -> None:
    value_format = value.get("format", _MISSING)
    if value_format is _MISSING:
        _check_gauge(value)
        return
    if type(value_format) is not str or value_format not in ENCODED_FORMATS:
        raise BucketError(UNKNOWN_VALUE_FORMAT, "value.format must be array, base64 or zstd")
    data = value.get("data", _MISSING)
    if data is _MISSING:
        raise BucketError(MISSING_FIELD, "value.data")
    if value_format == "array":
        if type(data) is not list:
            raise BucketError(WRONG_TYPE, f"value.data must be a list, got {_json_type(data)}")
        _check_numbers(data, "value.data")
        return
    if type(data) is not str:
        raise BucketError(WRONG_TYPE, f"value.data must be a string, got {_json_type(data)}")
    if _BASE64.fullmatch(data) is None or not _base64_length_ok(data):
        raise BucketError(INVALID_VALUE_DATA, f"value.data is not base64 ({value_format})")
    if value_format == "zstd" and not data.startswith(_ZSTD_BASE64_PREFIX):
        raise BucketError(INVALID_VALUE_DATA, "value.data is not a zstd frame")


def _base64_length_ok(data: str) -> bool:
    if data.endswith("="):
        return len(data) % 4 == 0
    # Unpadded: a remainder of 1 character can never encode whole bytes.
    return len(data) % 4 != 1


def _check_gauge(value: dict[str, Any]) -> None:
    for field in GAUGE_FIELDS:
        item = value.get(field, _MISSING)
        if item is _MISSING:
            raise BucketError(MISSING_FIELD, f"value.{field}")
        if type(item) not in _NUMBER_TYPES or (field == "count" and type(item) is not int):
            raise BucketError(WRONG_TYPE, f"value.{field} has the wrong type")
    if len(value) != len(GAUGE_FIELDS):
        raise BucketError(WRONG_TYPE, "gauge value has unexpected fields")


def _json_type(value: object) -> str:
    """The JSON type name of a decoded value (never the value itself)."""
    if value is None:
        return "null"
    if type(value) is bool:
        return "boolean"
    if type(value) is int:
        return "integer"
    if type(value) is float:
        return "number"
    if type(value) is str:
        return "string"
    if type(value) is list:
        return "array"
    if type(value) is dict:
        return "object"
    return type(value).__name__

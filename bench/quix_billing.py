"""The billing job's per-message work for the Quix Streams peer (`bench/quix_billing_app.py`).

Pure Python, stdlib and orjson only: it must import in the Quix virtualenv (where the
`workers` package cannot be installed: Quix pins confluent-kafka < 2.13) and in the fleet's
own virtualenv (where `tests/unit/test_bench_quix_billing.py` checks it against the fleet's
code). It is a faithful port of the hot path of `workers.billing` (SPEC §4):

- `parse_bucket`: `workers.billing.message.parse_bucket`, the same orjson decode and the same
  checks in the same order, raising `InvalidBucket` with the same reason codes;
- `BillingJob.bill`: `BillingCounter.count` (only the two usage metric ids bill,
  `quantity = int(value)`, nothing below 1) and `OutcomeEncoder.encode` (the same bytes
  %-format with a per-second cached head, so the outcome bytes are identical);
- `BillingJob.bill` also spots custom-metric buckets like `CustomMetricDetector` (name
  resolved from `mapping_meta`, MRI verdict cached per name) and keeps the set of their
  projects: the per-message work of the fleet's first-custom-metric check, without the
  PostgreSQL/Redis writes (the peer sets no flags).

Keep it in step with `workers/billing` (the unit test fails when the two disagree).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from math import isfinite
from typing import Any, Final, NamedTuple, NoReturn

from orjson import JSONDecodeError, loads

TRANSACTIONS_USAGE_METRIC_ID: Final = 9223372036854775945  # c:transactions/usage@none
SPANS_USAGE_METRIC_ID: Final = 9223372036854776226  # c:spans/usage@none
BILLABLE_METRICS: Final[Mapping[int, int]] = {
    TRANSACTIONS_USAGE_METRIC_ID: 2,  # TRANSACTION
    SPANS_USAGE_METRIC_ID: 12,  # SPAN
}

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

COUNTER: Final = "c"
METRIC_TYPES: Final = frozenset({"c", "d", "s", "g"})
ENCODED_FORMATS: Final = frozenset({"array", "base64", "zstd"})
GAUGE_FIELDS: Final = ("min", "max", "sum", "count", "last")
U64_LIMIT: Final = 1 << 64
_INT64_MAGNITUDE: Final = float(1 << 63)
_NUMBER_TYPES: Final = frozenset({int, float})
_BASE64: Final = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_ZSTD_BASE64_PREFIX: Final = "KLUv/"
_MRI: Final = re.compile(r"^(?P<entity>[^:]+):(?P<namespace>[^/]+)/(?P<name>[^@]+)@(?P<unit>.+)$")
_MISSING: Final[Any] = object()

ClockNs = Callable[[], int]
ProjectKey = tuple[int, int]

_BODY: Final = (
    b'%s%06dZ","org_id":%d,"project_id":%d,"key_id":null,"outcome":0,"reason":null,'
    b'"event_id":null,"category":%d,"quantity":%d}'
)


class InvalidBucket(ValueError):
    """A message that is not a valid generic-metrics bucket (same codes as `BucketError`)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


class Bucket(NamedTuple):
    org_id: int
    project_id: int
    metric_id: int
    type: str
    timestamp: int
    use_case_id: str
    value: Any
    counter: int | float | None
    mapping_meta: Mapping[str, Any]


_new_bucket: Final = partial(tuple.__new__, Bucket)


def parse_bucket(raw: bytes) -> Bucket:
    """Decode and validate one message value; raises `InvalidBucket` for anything invalid."""
    try:
        data = loads(raw)
    except JSONDecodeError:
        raise InvalidBucket(INVALID_JSON, "payload is not valid JSON") from None
    if type(data) is not dict:
        raise InvalidBucket(NOT_AN_OBJECT, f"top level is {_json_type(data)}")
    try:
        org_id = data["org_id"]
        project_id = data["project_id"]
        metric_id = data["metric_id"]
        metric_type = data["type"]
        value = data["value"]
        timestamp = data["timestamp"]
        use_case_id = data["use_case_id"]
    except KeyError as missing:
        raise InvalidBucket(MISSING_FIELD, str(missing.args[0])) from None

    if type(org_id) is not int or not 0 <= org_id < U64_LIMIT:
        _reject_number("org_id", org_id, ID_OUT_OF_RANGE)
    if type(project_id) is not int or not 0 <= project_id < U64_LIMIT:
        _reject_number("project_id", project_id, ID_OUT_OF_RANGE)
    if type(metric_id) is not int or not 0 <= metric_id < U64_LIMIT:
        _reject_number("metric_id", metric_id, ID_OUT_OF_RANGE)
    if type(timestamp) is not int or not 0 <= timestamp < U64_LIMIT:
        _reject_number("timestamp", timestamp, TIMESTAMP_OUT_OF_RANGE)
    if type(metric_type) is not str:
        raise InvalidBucket(WRONG_TYPE, f"type must be a string, got {_json_type(metric_type)}")
    if metric_type not in METRIC_TYPES:
        raise InvalidBucket(UNKNOWN_METRIC_TYPE, "type must be one of c, d, s, g")
    if type(use_case_id) is not str:
        raise InvalidBucket(
            WRONG_TYPE, f"use_case_id must be a string, got {_json_type(use_case_id)}"
        )
    mapping_meta = data.get("mapping_meta", _MISSING)
    if mapping_meta is _MISSING:
        mapping_meta = {}
    elif type(mapping_meta) is not dict:
        raise InvalidBucket(
            WRONG_TYPE, f"mapping_meta must be an object, got {_json_type(mapping_meta)}"
        )

    counter: int | float | None = None
    value_type = type(value)
    if value_type is int or value_type is float:
        if metric_type != COUNTER:
            raise InvalidBucket(
                TYPE_VALUE_MISMATCH, f"value is a number but type is {metric_type!r}"
            )
        if value_type is float and not isfinite(value):
            raise InvalidBucket(NON_NUMERIC_COUNTER, "counter value is not finite")
        counter = value
    elif value_type is list:
        _check_numbers(value, "value")
    elif value_type is dict:
        _check_value_object(value)
    elif metric_type == COUNTER:
        raise InvalidBucket(
            NON_NUMERIC_COUNTER, f"counter value is {_json_type(value)}, not a number"
        )
    else:
        raise InvalidBucket(
            WRONG_TYPE, f"value must be a list or an object, got {_json_type(value)}"
        )

    return _new_bucket(
        (
            org_id,
            project_id,
            metric_id,
            metric_type,
            timestamp,
            use_case_id,
            value,
            counter,
            mapping_meta,
        )
    )


def _reject_number(field: str, value: object, out_of_range: str) -> NoReturn:
    if type(value) is float and abs(value) >= _INT64_MAGNITUDE:
        raise InvalidBucket(out_of_range, f"{field} must be in [0, 2**64)")
    if type(value) is not int:
        raise InvalidBucket(WRONG_TYPE, f"{field} must be an integer, got {_json_type(value)}")
    raise InvalidBucket(out_of_range, f"{field} must be in [0, 2**64)")


def _check_numbers(items: list[Any], field: str) -> None:
    if not _NUMBER_TYPES.issuperset(map(type, items)):
        raise InvalidBucket(WRONG_TYPE, f"{field} must contain only numbers")


def _check_value_object(value: dict[str, Any]) -> None:
    value_format = value.get("format", _MISSING)
    if value_format is _MISSING:
        _check_gauge(value)
        return
    if type(value_format) is not str or value_format not in ENCODED_FORMATS:
        raise InvalidBucket(UNKNOWN_VALUE_FORMAT, "value.format must be array, base64 or zstd")
    data = value.get("data", _MISSING)
    if data is _MISSING:
        raise InvalidBucket(MISSING_FIELD, "value.data")
    if value_format == "array":
        if type(data) is not list:
            raise InvalidBucket(WRONG_TYPE, f"value.data must be a list, got {_json_type(data)}")
        _check_numbers(data, "value.data")
        return
    if type(data) is not str:
        raise InvalidBucket(WRONG_TYPE, f"value.data must be a string, got {_json_type(data)}")
    if _BASE64.fullmatch(data) is None or not _base64_length_ok(data):
        raise InvalidBucket(INVALID_VALUE_DATA, f"value.data is not base64 ({value_format})")
    if value_format == "zstd" and not data.startswith(_ZSTD_BASE64_PREFIX):
        raise InvalidBucket(INVALID_VALUE_DATA, "value.data is not a zstd frame")


def _base64_length_ok(data: str) -> bool:
    if data.endswith("="):
        return len(data) % 4 == 0
    return len(data) % 4 != 1


def _check_gauge(value: dict[str, Any]) -> None:
    for field in GAUGE_FIELDS:
        item = value.get(field, _MISSING)
        if item is _MISSING:
            raise InvalidBucket(MISSING_FIELD, f"value.{field}")
        if type(item) not in _NUMBER_TYPES or (field == "count" and type(item) is not int):
            raise InvalidBucket(WRONG_TYPE, f"value.{field} has the wrong type")
    if len(value) != len(GAUGE_FIELDS):
        raise InvalidBucket(WRONG_TYPE, "gauge value has unexpected fields")


def _json_type(value: object) -> str:
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


class BillingJob:
    """Bucket in, outcome bytes (or None) out; invalid input raises `InvalidBucket`."""

    def __init__(
        self,
        clock_ns: ClockNs = time.time_ns,
        categories: Mapping[int, int] = BILLABLE_METRICS,
    ) -> None:
        self._clock_ns = clock_ns
        self._categories = dict(categories)
        self._cached_second = -1
        self._cached_head = b""
        self._id_texts: dict[int, str] = {}
        self._verdicts: dict[str, bool] = {}
        #: Projects with at least one custom-metric bucket (the fleet flags these).
        self.custom_projects: set[ProjectKey] = set()

    def encode(self, org_id: int, project_id: int, category: int, quantity: int) -> bytes:
        """The exact bytes of `OutcomeEncoder.encode` (processing time from `clock_ns`)."""
        second, microsecond = divmod(self._clock_ns() // 1000, 1_000_000)
        if second != self._cached_second:
            formatted = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._cached_head = b'{"timestamp":"' + formatted.encode() + b"."
            self._cached_second = second
        return _BODY % (self._cached_head, microsecond, org_id, project_id, category, quantity)

    def bill(self, raw: bytes) -> bytes | None:
        org_id, project_id, metric_id, _, _, _, _, counter, meta = parse_bucket(raw)
        outcome = None
        if counter is not None:
            category = self._categories.get(metric_id)
            if category is not None:
                quantity = int(counter)
                if quantity >= 1:
                    outcome = self.encode(org_id, project_id, category, quantity)
        if meta and self._is_custom(meta, metric_id):
            self.custom_projects.add((org_id, project_id))
        return outcome

    def _is_custom(self, mapping_meta: Mapping[str, Any], metric_id: int) -> bool:
        key = self._id_texts.get(metric_id)
        if key is None:
            key = self._id_texts[metric_id] = str(metric_id)
        for inner in mapping_meta.values():
            if type(inner) is dict:
                name = inner.get(key)
                if type(name) is str:
                    break
        else:
            return False
        verdict = self._verdicts.get(name)
        if verdict is None:
            match = _MRI.match(name)
            verdict = self._verdicts[name] = (
                match is not None and match.group("namespace") == "custom"
            )
        return verdict

"""Realistic `snuba-generic-metrics` traffic for demos and benchmarks (`sample_traffic`).

`DEMO_MIX` (the default): about 80 % billable usage counters (transactions and spans) for a
few organisations and projects, 4 % custom-namespace counters, the rest non-billable buckets
in every value encoding the schema allows (distributions as lists / `array` / `base64`
(sometimes without padding) / `zstd`, sets likewise, gauges) and about 0.5 % malformed
messages that the worker must send to the DLQ (half the default DLQ limit: at 1 % a long
run would stop the worker; docs/operations.md, DLQ limits). `PRODUCTION_MIX` is what a real
`snuba-generic-metrics` topic looks like: about 10 % usage counters, 2 % custom metrics, the
rest distributions, sets and gauges. Deterministic for a given seed.

The (org, project) pairs default to small made-up ids; `sample_traffic_for_projects` takes
real ones (e.g. the demo's projects, so custom metrics flag them).
"""

from __future__ import annotations

import base64
import random
import struct
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

import orjson
from arroyo.backends.kafka import KafkaPayload

from workers.billing.counting import SPANS_USAGE_METRIC_ID, TRANSACTIONS_USAGE_METRIC_ID

BASE_TIMESTAMP: Final = 1_704_614_940  # 2024-01-07T08:09:00Z
_ENVIRONMENT_TAG: Final = 9223372036854776010
_RELEASE_TAG: Final = 9223372036854776017
_TRANSACTION_TAG: Final = 9223372036854776020
_DURATION_METRIC: Final = 9223372036854775909  # d:transactions/duration@millisecond
_SPAN_DURATION_METRIC: Final = 9223372036854776215  # d:spans/duration@millisecond
_USERS_METRIC: Final = 9223372036854775910  # s:transactions/user@none
_MEASUREMENT_METRIC: Final = 9223372036854775990  # g:transactions/alert@none
_CUSTOM_COUNTER: Final = 9223372036854776500  # c:custom/checkout.clicks@none
# The bundled schema examples' zstd payloads (a distribution and a set): real frames.
_ZSTD_DISTRIBUTION: Final = "KLUv/QBYrQAAcAAA8D8AQAAAAAAAAAhAAgBgRgCw"
_ZSTD_SET: Final = "KLUv/QBYQQAAAQAAAAcAAAA"

_PROJECTS: Final = tuple((org, org * 10 + p) for org in range(1, 5) for p in range(1, 4))


class TrafficMix(NamedTuple):
    """Cumulative upper bounds of a uniform roll, in this order of message kinds."""

    malformed: float
    transactions_usage: float
    spans_usage: float
    custom: float
    distribution: float
    set: float
    # the rest: gauges


DEMO_MIX: Final = TrafficMix(0.005, 0.55, 0.81, 0.85, 0.91, 0.96)
PRODUCTION_MIX: Final = TrafficMix(0.001, 0.071, 0.101, 0.121, 0.60, 0.85)

# Payloads a consumer must reject, one per reason code (never billable).
_MALFORMED: Final[tuple[bytes, ...]] = (
    b"{not json",
    b"[1, 2, 3]",
    b'{"org_id": 1, "project_id": 2, "type": "c", "value": 1, "timestamp": 1}',
    b'{"org_id": "1", "project_id": 2, "metric_id": 9223372036854775945, "type": "c",'
    b' "value": 1, "timestamp": 1704614940, "use_case_id": "transactions"}',
    b'{"org_id": -1, "project_id": 2, "metric_id": 9223372036854775945, "type": "c",'
    b' "value": 1, "timestamp": 1704614940, "use_case_id": "transactions"}',
    b'{"org_id": 1, "project_id": 2, "metric_id": 9223372036854775945, "type": "c",'
    b' "value": "seven", "timestamp": 1704614940, "use_case_id": "transactions"}',
    b'{"org_id": 1, "project_id": 2, "metric_id": 65563, "type": "d",'
    b' "value": {"format": "lz4", "data": "AAAA"}, "timestamp": 1704614940,'
    b' "use_case_id": "spans"}',
)


def _mapping_meta(metric_id: int, mri: str) -> dict[str, Any]:
    return {
        "c": {str(metric_id): mri},
        "h": {str(_ENVIRONMENT_TAG): "environment", str(_RELEASE_TAG): "release"},
    }


def _bucket(
    rng: random.Random,
    metric_id: int,
    mri: str,
    metric_type: str,
    value: Any,
    use_case_id: str,
    timestamp: int,
    projects: Sequence[tuple[int, int]] = _PROJECTS,
) -> dict[str, Any]:
    org_id, project_id = rng.choice(projects)
    return {
        "version": 2,
        "use_case_id": use_case_id,
        "org_id": org_id,
        "project_id": project_id,
        "metric_id": metric_id,
        "timestamp": timestamp,
        "sentry_received_timestamp": timestamp + rng.random() * 10,
        "tags": {
            str(_ENVIRONMENT_TAG): rng.choice(("production", "staging")),
            str(_RELEASE_TAG): f"backend@{rng.randint(1, 30)}.0.0",
            str(_TRANSACTION_TAG): rng.choice(("/api/checkout", "/api/cart", "/home")),
        },
        "retention_days": 90,
        "mapping_meta": _mapping_meta(metric_id, mri),
        "type": metric_type,
        "value": value,
        "aggregation_option": "ten_second",
    }


def _b64(data: bytes, pad: bool) -> str:
    text = base64.b64encode(data).decode()
    return text if pad else text.rstrip("=")


def _distribution_value(rng: random.Random) -> Any:
    values = [round(rng.lognormvariate(4, 1), 3) for _ in range(rng.randint(1, 12))]
    kind = rng.randrange(4)
    if kind == 0:
        return values
    if kind == 1:
        return {"format": "array", "data": values}
    if kind == 2:
        packed = struct.pack(f"<{len(values)}d", *values)
        return {"format": "base64", "data": _b64(packed, pad=rng.random() < 0.5)}
    return {"format": "zstd", "data": _ZSTD_DISTRIBUTION}


def _set_value(rng: random.Random) -> Any:
    members = sorted(rng.sample(range(1, 2**32), rng.randint(1, 6)))
    kind = rng.randrange(4)
    if kind == 0:
        return members
    if kind == 1:
        return {"format": "array", "data": members}
    if kind == 2:
        packed = struct.pack(f"<{len(members)}I", *members)
        return {"format": "base64", "data": _b64(packed, pad=rng.random() < 0.5)}
    return {"format": "zstd", "data": _ZSTD_SET}


def _gauge_value(rng: random.Random) -> dict[str, Any]:
    samples = [round(rng.uniform(0, 100), 2) for _ in range(rng.randint(1, 5))]
    return {
        "min": min(samples),
        "max": max(samples),
        "sum": round(sum(samples), 2),
        "count": len(samples),
        "last": samples[-1],
    }


def _usage_value(rng: random.Random) -> int | float:
    # Mostly whole counts (sent as floats by Relay), sometimes extrapolated fractions.
    roll = rng.random()
    if roll < 0.6:
        return float(rng.randint(1, 50))
    if roll < 0.8:
        return rng.randint(1, 50)
    if roll < 0.98:
        return round(rng.uniform(0.5, 40.0), 3)
    return 0.0


def sample_message(
    rng: random.Random,
    index: int,
    projects: Sequence[tuple[int, int]] = _PROJECTS,
    mix: TrafficMix = DEMO_MIX,
    custom_projects: Sequence[tuple[int, int]] | None = None,
) -> bytes:
    """One generic-metrics message value; `mix.malformed` of them are malformed.

    Custom-namespace counters go to `custom_projects` (default: `projects`; an empty
    sequence means none: those rolls become distributions).
    """
    timestamp = BASE_TIMESTAMP + (index // 100) * 10
    roll = rng.random()
    if roll < mix.malformed:
        return rng.choice(_MALFORMED)
    if roll < mix.transactions_usage:
        bucket = _bucket(
            rng,
            TRANSACTIONS_USAGE_METRIC_ID,
            "c:transactions/usage@none",
            "c",
            _usage_value(rng),
            "transactions",
            timestamp,
            projects,
        )
    elif roll < mix.spans_usage:
        bucket = _bucket(
            rng,
            SPANS_USAGE_METRIC_ID,
            "c:spans/usage@none",
            "c",
            _usage_value(rng),
            "spans",
            timestamp,
            projects,
        )
    elif roll < mix.custom and (custom_projects is None or custom_projects):
        bucket = _bucket(
            rng,
            _CUSTOM_COUNTER,
            "c:custom/checkout.clicks@none",
            "c",
            float(rng.randint(1, 9)),
            "custom",
            timestamp,
            custom_projects if custom_projects is not None else projects,
        )
    elif roll < mix.distribution:
        metric_id, mri, use_case = rng.choice(
            (
                (_DURATION_METRIC, "d:transactions/duration@millisecond", "transactions"),
                (_SPAN_DURATION_METRIC, "d:spans/duration@millisecond", "spans"),
            )
        )
        bucket = _bucket(
            rng, metric_id, mri, "d", _distribution_value(rng), use_case, timestamp, projects
        )
    elif roll < mix.set:
        bucket = _bucket(
            rng,
            _USERS_METRIC,
            "s:transactions/user@none",
            "s",
            _set_value(rng),
            "transactions",
            timestamp,
            projects,
        )
    else:
        bucket = _bucket(
            rng,
            _MEASUREMENT_METRIC,
            "g:transactions/alert@none",
            "g",
            _gauge_value(rng),
            "transactions",
            timestamp,
            projects,
        )
    return orjson.dumps(bucket)


def sample_traffic(count: int, seed: int) -> list[KafkaPayload]:
    """`count` realistic input messages (Kafka key none), deterministic for `seed`."""
    rng = random.Random(seed)
    return [KafkaPayload(None, sample_message(rng, index), []) for index in range(count)]


def sample_traffic_for_projects(
    count: int,
    seed: int,
    projects: Sequence[tuple[int, int]],
    *,
    custom_projects: Sequence[tuple[int, int]] | None = None,
    mix: TrafficMix = DEMO_MIX,
) -> list[KafkaPayload]:
    """Like `sample_traffic`, for these (org_id, project_id) pairs.

    Custom-namespace counters (`c:custom/checkout.clicks@none`) go only to `custom_projects`
    (default: all of `projects`), so exactly those projects get the first-custom-metric flag.
    """
    if not projects:
        raise ValueError("at least one project is needed")
    rng = random.Random(seed)
    return [
        KafkaPayload(None, sample_message(rng, index, projects, mix, custom_projects), [])
        for index in range(count)
    ]

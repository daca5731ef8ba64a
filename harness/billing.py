"""Billing input for tests and benchmarks: a usage bucket that bills one outcome, and a custom
metric bucket that flags its project (the first-custom-metric flag)."""

from __future__ import annotations

import random
from typing import Any, Final

import orjson

from workers.billing.counting import TRANSACTIONS_USAGE_METRIC_ID

CUSTOM_METRIC_ID: Final = 9223372036854776500


def usage_bucket(metric_id: int, value: Any, org_id: int, project_id: int, **extra: Any) -> bytes:
    mri = "c:transactions/usage@none" if metric_id == TRANSACTIONS_USAGE_METRIC_ID else None
    mri = mri or "c:spans/usage@none"
    data: dict[str, Any] = {
        "version": 2,
        "use_case_id": "transactions" if metric_id == TRANSACTIONS_USAGE_METRIC_ID else "spans",
        "org_id": org_id,
        "project_id": project_id,
        "metric_id": metric_id,
        "timestamp": 1704614940,
        "sentry_received_timestamp": 1704614941.5,
        "tags": {"9223372036854776010": "production"},
        "retention_days": 90,
        "mapping_meta": {"c": {str(metric_id): mri}},
        "type": "c",
        "value": value,
    }
    data.update(extra)
    return orjson.dumps(data)


def custom_bucket(org_id: int, project_id: int, mri: str = "c:custom/clicks@none") -> bytes:
    letter = random.choice("chdfr")
    return orjson.dumps(
        {
            "version": 2,
            "use_case_id": "custom",
            "org_id": org_id,
            "project_id": project_id,
            "metric_id": CUSTOM_METRIC_ID,
            "timestamp": 1704614940,
            "tags": {},
            "retention_days": 90,
            "mapping_meta": {"h": {"5": "environment"}, letter: {str(CUSTOM_METRIC_ID): mri}},
            "type": "c",
            "value": 3.0,
        }
    )

"""Billing input for tests and benchmarks: a usage bucket that bills one outcome."""

from __future__ import annotations

from typing import Any

import orjson

from workers.billing.counting import TRANSACTIONS_USAGE_METRIC_ID


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

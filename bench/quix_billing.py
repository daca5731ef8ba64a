"""The billing job's per-message work for the Quix Streams peer (`bench/quix_billing_app.py`).

The peer does exactly the fleet's work per message, with the fleet's own code: the
stdlib-and-orjson modules of `workers.billing` (`message.parse_bucket`, the billable
categories of `counting`, `outcome.OutcomeEncoder`, `custom_metrics.CustomMetricDetector`)
import in the Quix virtualenv, where the `workers` package is not installed (Quix pins
confluent-kafka < 2.13) but the repository root is on `sys.path` (`python -m bench...`).
Nothing here imports Arroyo, confluent-kafka, psycopg or redis (a unit test checks that).

`BillingJob.bill` is `TranslateOutcomes`'s per-bucket work without its batching: decode and
validate, count (only the two usage metric ids bill, for `counting.billable_quantity`),
encode the outcome bytes, and spot custom-metric buckets (their projects are
kept; the peer writes no flags).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from workers.billing.counting import DEFAULT_BILLABLE_METRICS, billable_quantity
from workers.billing.custom_metrics import CustomMetricDetector
from workers.billing.message import BucketError, parse_bucket
from workers.billing.outcome import ClockNs, OutcomeEncoder

InvalidBucket = BucketError
ProjectKey = tuple[int, int]


class BillingJob:
    """Bucket in, outcome bytes (or None) out; invalid input raises `InvalidBucket`."""

    def __init__(
        self,
        clock_ns: ClockNs = time.time_ns,
        categories: Mapping[int, int] = DEFAULT_BILLABLE_METRICS,
    ) -> None:
        self._categories = {int(metric): int(category) for metric, category in categories.items()}
        self.encode = OutcomeEncoder(clock_ns).encode
        self._is_custom = CustomMetricDetector().is_custom
        #: Projects with at least one custom-metric bucket (the fleet flags these).
        self.custom_projects: set[ProjectKey] = set()

    def bill(self, raw: bytes) -> bytes | None:
        org_id, project_id, metric_id, _, _, _, counter, meta = parse_bucket(raw)
        outcome = None
        if counter is not None:
            category = self._categories.get(metric_id)
            if category is not None:
                quantity = billable_quantity(counter)
                if quantity:
                    outcome = self.encode(org_id, project_id, category, quantity)
        if meta and self._is_custom(meta, metric_id):
            self.custom_projects.add((org_id, project_id))
        return outcome

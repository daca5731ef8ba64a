"""What the demo (and an operator) wants to see of the billing worker.

- `outcome_totals(metrics_text)`: acknowledged outcomes and their quantity per data category,
  from a scrape of the worker's `/metrics` (`workers_billing_outcomes_total` and
  `workers_billing_outcome_quantity_total`);
- `flagged_projects(connection)`: projects whose `has_custom_metrics` flag (bit 16) is set,
  with the time their `first_custom_metric.sent` analytics event was recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from workers.billing.flags import FIRST_CUSTOM_METRIC_EVENT
from workers.common.projects import HAS_CUSTOM_METRICS_FLAG

OUTCOMES_SAMPLE: Final = "workers_billing_outcomes_total"
QUANTITY_SAMPLE: Final = "workers_billing_outcome_quantity_total"


@dataclass(frozen=True)
class CategoryTotals:
    """Acknowledged outcomes of one data category (`transaction`, `span`, or a number)."""

    category: str
    outcomes: int
    quantity: int


def outcome_totals(metrics_text: str, worker: str = "billing") -> dict[str, CategoryTotals]:
    """Per category label, the outcomes and quantity in a Prometheus text scrape."""
    outcomes: dict[str, float] = {}
    quantity: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.labels.get("worker") != worker:
                continue
            category = sample.labels.get("category")
            if category is None:
                continue
            if sample.name == OUTCOMES_SAMPLE:
                outcomes[category] = outcomes.get(category, 0.0) + sample.value
            elif sample.name == QUANTITY_SAMPLE:
                quantity[category] = quantity.get(category, 0.0) + sample.value
    return {
        category: CategoryTotals(
            category, round(outcomes.get(category, 0.0)), round(quantity.get(category, 0.0))
        )
        for category in sorted(outcomes.keys() | quantity.keys())
    }


@dataclass(frozen=True)
class FlaggedProject:
    organization_id: int
    project_id: int
    slug: str
    platform: str | None
    # When `first_custom_metric.sent` was recorded; None if the flag was set another way.
    event_recorded_at: datetime | None


def flagged_projects(
    connection: psycopg.Connection[Any], organization_id: int | None = None
) -> list[FlaggedProject]:
    """Projects with the `has_custom_metrics` bit, oldest organization and project first."""
    query = (
        "SELECT p.organization_id, p.id, p.slug, p.platform, e.recorded_at "
        "FROM projects p "
        "LEFT JOIN analytics_events e "
        "ON e.project_id = p.id AND e.event_type = %(event)s "
        "WHERE p.flags & %(flag)s <> 0 "
    )
    params: dict[str, Any] = {"event": FIRST_CUSTOM_METRIC_EVENT, "flag": HAS_CUSTOM_METRICS_FLAG}
    if organization_id is not None:
        query += "AND p.organization_id = %(organization)s "
        params["organization"] = organization_id
    query += "ORDER BY p.organization_id, p.id"
    rows = connection.execute(query, params).fetchall()
    return [FlaggedProject(int(r[0]), int(r[1]), str(r[2]), r[3], r[4]) for r in rows]

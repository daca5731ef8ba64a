"""The billing worker's part in `workers demo` (`BILLING_DEMO`), and what it reports.

- fed `demo_traffic`: generic-metrics buckets for the demo organization's projects, a few
  malformed; only `DEMO_CUSTOM_PROJECTS` send custom metrics, so exactly those get flagged;
- summarised by `outcome_totals(metrics_text)`: acknowledged outcomes and their quantity per
  data category, from a scrape of the worker's `/metrics` (`workers_billing_outcomes_total`
  and `workers_billing_outcome_quantity_total`), and `flagged_projects(connection)`:
  projects whose `has_custom_metrics` flag (bit 16) is set, with the time their
  `first_custom_metric.sent` analytics event was recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import psycopg
from arroyo.backends.kafka import KafkaPayload
from prometheus_client.parser import text_string_to_metric_families

from workers.billing.flags import FIRST_CUSTOM_METRIC_EVENT
from workers.billing.traffic import sample_traffic_for_projects
from workers.common.demo_hooks import DemoContext, DemoFeed, DemoHooks
from workers.common.projects import HAS_CUSTOM_METRICS_FLAG
from workers.common.settings import Settings
from workers.demo.organization import demo_organization, demo_projects

OUTCOMES_SAMPLE: Final = "workers_billing_outcomes_total"
QUANTITY_SAMPLE: Final = "workers_billing_outcome_quantity_total"
# Only these send custom metrics, so exactly these get the first-custom-metric flag.
DEMO_CUSTOM_PROJECTS: Final = ("backend",)


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


def demo_traffic(settings: Settings, count: int, seed: int) -> list[KafkaPayload]:
    """`count` buckets for the demo organization's projects (the same for a given seed)."""
    projects = demo_projects(settings)
    pairs = [(p.organization_id, p.id) for p in projects]
    custom = [(p.organization_id, p.id) for p in projects if p.slug in DEMO_CUSTOM_PROJECTS]
    return sample_traffic_for_projects(count, seed, pairs, custom_projects=custom)


def _feed(demo: DemoContext) -> DemoFeed:
    traffic = demo_traffic(demo.settings, demo.messages, demo.seed)
    return DemoFeed(demo.produce(demo.topic, traffic))


def _settled(demo: DemoContext, metrics_text: str, outputs: int) -> bool:
    """The per-second outcome tallies caught up with the outcomes committed to the topic."""
    return sum(t.outcomes for t in outcome_totals(metrics_text, demo.worker).values()) >= outputs


def _summarise(demo: DemoContext, metrics_text: str) -> list[str]:
    totals = outcome_totals(metrics_text, demo.worker)
    lines = [f"{t.category}: {t.outcomes} outcomes, quantity {t.quantity}" for t in totals.values()]
    organization = demo_organization(demo.settings)
    with psycopg.connect(demo.settings.database_url, autocommit=True) as connection:
        flagged = flagged_projects(connection, organization_id=organization.id)
    lines.append("flagged: " + (", ".join(sorted(p.slug for p in flagged)) or "-"))
    return lines


BILLING_DEMO: Final = DemoHooks(feed=_feed, summarise=_summarise, settled=_settled)

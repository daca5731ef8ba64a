"""The benchmark's input: a topic of generic-metrics messages, its projects, what it must yield.

`prepare` creates the input topic, an organization with `PROJECTS` projects (the first
`CUSTOM_PROJECTS` send custom metrics) and produces the traffic; `expected_outcomes` counts
the outcomes it must yield by the fleet's own decoding and counting (`billable_outcome`).
`reset_flags` clears the projects' flags, analytics events and Redis keys before each
flag-enabled run, `flagged_count` counts the flagged projects after one, and `cleanup`
deletes the rows and topics.
"""

from __future__ import annotations

import collections
import logging
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from arroyo.backends.kafka import KafkaPayload
from confluent_kafka import Producer as ConfluentProducer
from confluent_kafka.admin import AdminClient
from redis import Redis

from harness.kafka import make_topics, unique_name
from workers.billing.counting import DEFAULT_BILLABLE_METRICS, billable_quantity
from workers.billing.flags import FIRST_CUSTOM_METRIC_EVENT, flag_cache_key
from workers.billing.message import BucketError, MetricBucket, parse_bucket
from workers.billing.traffic import DEMO_MIX, PRODUCTION_MIX, sample_traffic_for_projects
from workers.common.kafka_config import admin_configuration
from workers.common.projects import HAS_CUSTOM_METRICS_FLAG, create_organization
from workers.common.settings import Settings

PARTITIONS: Final = 4
PROJECTS: Final = 24
CUSTOM_PROJECTS: Final = 8


# What bills: `counting`'s map and quantity rule, for the loops that are not the chain.

#: (org_id, project_id, category, quantity)
BillableOutcome = tuple[int, int, int, int]


def billable_outcome(bucket: MetricBucket) -> BillableOutcome | None:
    category = DEFAULT_BILLABLE_METRICS.get(bucket.metric_id)
    if category is None or bucket.counter is None:
        return None
    quantity = billable_quantity(bucket.counter)
    return (bucket.org_id, bucket.project_id, category, quantity) if quantity else None


@dataclass(frozen=True)
class Workload:
    settings: Settings
    topic: str
    messages: int
    organization_id: int
    project_ids: list[int]
    # (org_id, project_id, category, quantity) -> how many outcomes the input must yield.
    expected: Mapping[tuple[int, int, int, int], int] = field(default_factory=dict)


def prepare(settings: Settings, messages: int, mix_name: str) -> Workload:
    topic = unique_name("bench-billing")
    make_topics(settings, topic, partitions=PARTITIONS)
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        organization = create_organization(connection, f"bench-{uuid.uuid4().hex[:12]}", None)
        base = random.randrange(2**40, 2**50)
        project_ids = [base + index for index in range(PROJECTS)]
        for index, project_id in enumerate(project_ids):
            connection.execute(
                "INSERT INTO projects (id, organization_id, name, slug, platform) "
                "VALUES (%s, %s, %s, %s, 'python')",
                (project_id, organization.id, f"bench-{index}", f"bench-{index}"),
            )
    pairs = [(organization.id, project_id) for project_id in project_ids]
    traffic = sample_traffic_for_projects(
        messages,
        2024,
        pairs,
        custom_projects=pairs[:CUSTOM_PROJECTS],
        mix=PRODUCTION_MIX if mix_name == "production" else DEMO_MIX,
    )
    producer = ConfluentProducer(
        {**settings.kafka_client_config(), "linger.ms": 20, "compression.type": "lz4"}
    )
    for payload in traffic:
        while True:
            try:
                producer.produce(topic, value=payload.value)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0
    return Workload(
        settings, topic, messages, organization.id, project_ids, expected_outcomes(traffic)
    )


def expected_outcomes(traffic: Sequence[KafkaPayload]) -> collections.Counter[Any]:
    """The outcomes the input must yield (by the fleet's own decoding and counting)."""
    expected: collections.Counter[Any] = collections.Counter()
    for payload in traffic:
        try:
            outcome = billable_outcome(parse_bucket(payload.value))
        except BucketError:
            continue
        if outcome is not None:
            expected[outcome] += 1
    return expected


def reset_flags(work: Workload) -> None:
    with psycopg.connect(work.settings.database_url, autocommit=True) as connection:
        connection.execute(
            "UPDATE projects SET flags = flags & ~%s::bigint WHERE organization_id = %s",
            (HAS_CUSTOM_METRICS_FLAG, work.organization_id),
        )
        connection.execute(
            "DELETE FROM analytics_events WHERE event_type = %s AND organization_id = %s",
            (FIRST_CUSTOM_METRIC_EVENT, work.organization_id),
        )
    redis: Redis = Redis.from_url(work.settings.redis_url)
    redis.delete(*(flag_cache_key(work.organization_id, p) for p in work.project_ids))
    redis.close()


def flagged_count(work: Workload) -> int:
    with psycopg.connect(work.settings.database_url) as connection:
        row = connection.execute(
            "SELECT count(*) FROM projects WHERE organization_id = %s AND flags & %s <> 0",
            (work.organization_id, HAS_CUSTOM_METRICS_FLAG),
        ).fetchone()
    return int(row[0]) if row else 0


def cleanup(work: Workload, topics: Sequence[str]) -> None:
    reset_flags(work)
    with psycopg.connect(work.settings.database_url, autocommit=True) as connection:
        connection.execute(
            "DELETE FROM projects WHERE organization_id = %s", (work.organization_id,)
        )
        connection.execute("DELETE FROM organizations WHERE id = %s", (work.organization_id,))
    admin = AdminClient(admin_configuration(work.settings))
    for future in admin.delete_topics(list(topics), operation_timeout=30).values():
        try:
            future.result()
        except Exception as error:  # best effort
            logging.getLogger(__name__).warning("could not delete a topic: %s", error)

"""The demo's organization and projects, created on first use and reused by every run."""

from __future__ import annotations

from typing import Final

import psycopg
from redis import Redis

from workers.common.projects import (
    Organization,
    Project,
    ProjectStoreError,
    create_organization,
    create_project,
    find_organization,
    list_projects,
)
from workers.common.projects.cli import PROJECT_SNOWFLAKE_KEY
from workers.common.settings import Settings
from workers.common.snowflake import SentrySnowflakeGenerator

DEMO_ORGANIZATION: Final = "demo"
DEMO_PROJECTS: Final = ("frontend", "backend", "mobile")


def demo_organization(settings: Settings) -> Organization:
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        try:
            return find_organization(connection, DEMO_ORGANIZATION)
        except ProjectStoreError:
            return create_organization(connection, DEMO_ORGANIZATION, "Demo organization")


def demo_projects(settings: Settings) -> list[Project]:
    """The demo organization's projects, in `DEMO_PROJECTS` order."""
    organization = demo_organization(settings)
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        existing = {p.slug: p for p in list_projects(connection, organization.slug)}
        missing = [slug for slug in DEMO_PROJECTS if slug not in existing]
        if missing:
            redis = Redis.from_url(settings.redis_url)
            try:
                generator = SentrySnowflakeGenerator(
                    redis, key=PROJECT_SNOWFLAKE_KEY, region=settings.snowflake_region
                )
                for slug in missing:
                    existing[slug] = create_project(
                        connection, redis, generator.generate, organization.slug, slug, "python"
                    )
            finally:
                redis.close()
    return [existing[slug] for slug in DEMO_PROJECTS]

"""The project store against the real PostgreSQL and Redis."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from click.testing import CliRunner
from redis import Redis

from workers.common.projects import (
    Organization,
    ProjectStoreError,
    create_organization,
    create_project,
    list_projects,
)
from workers.common.projects.cli import PROJECT_SNOWFLAKE_KEY, orgs, projects
from workers.common.settings import Settings
from workers.common.snowflake import SentrySnowflakeGenerator, decode_sentry_id

pytestmark = pytest.mark.integration


@pytest.fixture
def generate_id(redis_client: Redis, settings: Settings) -> Callable[[], int]:
    # The key and region every writer of `projects` uses. A Sentry-layout id does not carry
    # its key: a second key with the same region hands out the same (second, sequence)
    # pairs, and its rows collide with the CLI's (five collisions in one second is
    # `MaxSnowflakeRetryError`, which is how this once failed with a per-test key).
    generator = SentrySnowflakeGenerator(
        redis_client, key=PROJECT_SNOWFLAKE_KEY, region=settings.snowflake_region
    )
    return generator.generate


@pytest.fixture
def organization(connection: psycopg.Connection) -> Organization:
    slug = f"org-{uuid.uuid4().hex[:10]}"
    return create_organization(connection, slug, "Test Org")


def test_project_gets_a_snowflake_id_slug_and_default_flags(
    connection: psycopg.Connection,
    redis_client: Redis,
    generate_id: Callable[[], int],
    organization: Organization,
) -> None:
    project = create_project(
        connection, redis_client, generate_id, organization.slug.upper(), "My Backend!", "python"
    )
    assert project.slug == "my-backend"
    assert project.flags == 10
    assert decode_sentry_id(project.id).region == 0
    (stored,) = list_projects(connection, organization.slug)
    assert stored == project


def test_same_name_twice_gets_a_suffix_and_case_insensitive_uniqueness_holds(
    connection: psycopg.Connection,
    redis_client: Redis,
    generate_id: Callable[[], int],
    organization: Organization,
) -> None:
    first = create_project(connection, redis_client, generate_id, organization.slug, "API")
    second = create_project(connection, redis_client, generate_id, organization.slug, "api")
    assert first.slug == "api"
    assert second.slug.startswith("api-")
    assert len(second.slug) == len("api-") + 2
    with pytest.raises(psycopg.errors.UniqueViolation):
        connection.execute(
            "INSERT INTO projects (id, organization_id, name, slug) VALUES (1, %s, 'x', 'API')",
            (organization.id,),
        )


def test_twenty_concurrent_creations_of_one_name_get_twenty_distinct_slugs(
    settings: Settings,
    redis_client: Redis,
    generate_id: Callable[[], int],
    organization: Organization,
) -> None:
    def create(_: int) -> str:
        with psycopg.connect(settings.database_url, autocommit=True) as own:
            client = Redis.from_url(settings.redis_url)
            try:
                return create_project(own, client, generate_id, organization.slug, "Worker").slug
            finally:
                client.close()

    with ThreadPoolExecutor(max_workers=20) as pool:
        slugs = list(pool.map(create, range(20)))
    assert len(set(slugs)) == 20
    assert "worker" in slugs
    with psycopg.connect(settings.database_url) as check:
        count = check.execute(
            "SELECT count(DISTINCT lower(slug)) FROM projects WHERE organization_id = %s",
            (organization.id,),
        ).fetchone()
    assert count == (20,)


def test_the_slug_lock_serialises_creations(
    connection: psycopg.Connection,
    redis_client: Redis,
    generate_id: Callable[[], int],
    organization: Organization,
) -> None:
    held = redis_client.lock(f"slug:project:{organization.id}", timeout=30)
    assert held.acquire(blocking=False)
    try:
        with pytest.raises(ProjectStoreError, match="could not take the slug lock"):
            create_project(
                connection,
                redis_client,
                generate_id,
                organization.slug,
                "Blocked",
                lock_wait_seconds=0.5,
            )
    finally:
        held.release()
    assert list_projects(connection, organization.slug) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [("", "must not be empty"), ("x" * 201, "longer than 200 characters")],
)
def test_bad_project_names_are_refused(
    connection: psycopg.Connection,
    redis_client: Redis,
    generate_id: Callable[[], int],
    organization: Organization,
    name: str,
    message: str,
) -> None:
    with pytest.raises(ProjectStoreError, match=message):
        create_project(connection, redis_client, generate_id, organization.slug, name)


def test_unknown_organization_and_duplicate_or_invalid_org_slugs(
    connection: psycopg.Connection,
    redis_client: Redis,
    generate_id: Callable[[], int],
    organization: Organization,
) -> None:
    with pytest.raises(ProjectStoreError, match="no organization with slug 'nope-"):
        create_project(connection, redis_client, generate_id, f"nope-{uuid.uuid4().hex}", "x")
    with pytest.raises(ProjectStoreError, match="already exists"):
        create_organization(connection, organization.slug.upper().lower(), None)
    for bad in ("Has Space", "123", "-lead", ""):
        with pytest.raises(ProjectStoreError, match="invalid organization slug"):
            create_organization(connection, bad, None)


def test_cli_creates_and_lists(settings: Settings) -> None:
    runner = CliRunner()
    slug = f"cli-{uuid.uuid4().hex[:8]}"
    created = runner.invoke(orgs, ["create", "--slug", slug, "--name", "CLI Org"])
    assert created.exit_code == 0, created.output
    made = runner.invoke(
        projects, ["create", "--org", slug, "--name", "Settings", "--platform", "go"]
    )
    assert made.exit_code == 0, made.output
    project_id, project_slug, name = made.output.strip().split("\t")
    assert len(project_slug) == 12
    assert name == "Settings"
    decode_sentry_id(int(project_id))
    listed = runner.invoke(projects, ["list", "--org", slug])
    assert listed.exit_code == 0, listed.output
    assert f"{project_id}\t" in listed.output
    assert "\tgo\t10" in listed.output
    missing = runner.invoke(projects, ["list", "--org", "does-not-exist-xyz"])
    assert missing.exit_code == 1
    assert "no organization with slug 'does-not-exist-xyz'" in missing.output

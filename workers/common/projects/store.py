"""Organizations and projects in PostgreSQL (docs/reference.md, Projects).

Creating a project takes the Redis lock `slug:project:{org_id}` (5 s lease, up to 10 s to
acquire) so concurrent creations in one organization pick distinct slugs without a storm of
unique violations; the case-insensitive UNIQUE index is still the real guard, and a slug lost
to a writer that did not hold the lock (an expired lease) is simply chosen again. Project ids
are Sentry-layout snowflakes (key `project_snowflake_key`), saved with the id-retry rule.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg.rows import class_row
from redis import Redis
from redis.exceptions import LockError

from workers.common.projects.slugs import choose_slug, is_valid_slug
from workers.common.snowflake import save_with_snowflake_retry

logger = logging.getLogger(__name__)

DEFAULT_PROJECT_FLAGS = 10
HAS_CUSTOM_METRICS_FLAG = 1 << 16
MAX_PROJECT_NAME_LENGTH = 200
MAX_ORGANIZATION_NAME_LENGTH = 64
MAX_PLATFORM_LENGTH = 64
SLUG_LOCK_LEASE_SECONDS = 5.0
SLUG_LOCK_ACQUIRE_SECONDS = 10.0
# A slug taken between our check and our insert (by a writer whose lease expired) is chosen
# again; this bounds how often.
MAX_SLUG_CONFLICTS = 5
PROJECT_SLUG_CONSTRAINT = "projects_organization_slug_unique"
ORGANIZATION_SLUG_CONSTRAINT = "organizations_slug_unique"


class ProjectStoreError(ValueError):
    """A request the project store refuses; the message says why."""


@dataclass(frozen=True)
class Organization:
    id: int
    slug: str
    name: str


@dataclass(frozen=True)
class Project:
    id: int
    organization_id: int
    name: str
    slug: str
    platform: str | None
    flags: int


def project_slug_lock_key(organization_id: int) -> str:
    return f"slug:project:{organization_id}"


def create_organization(
    connection: psycopg.Connection, slug: str, name: str | None
) -> Organization:
    if not is_valid_slug(slug):
        raise ProjectStoreError(
            f"invalid organization slug {slug!r}: use 1-50 lowercase letters, digits, '-' or "
            "'_', not only digits, not starting or ending with '-'"
        )
    display_name = name or slug
    if len(display_name) > MAX_ORGANIZATION_NAME_LENGTH:
        raise ProjectStoreError(
            f"organization name is longer than {MAX_ORGANIZATION_NAME_LENGTH} characters"
        )
    try:
        with (
            connection.transaction(),
            connection.cursor(row_factory=class_row(Organization)) as cursor,
        ):
            cursor.execute(
                "INSERT INTO organizations (slug, name) VALUES (%s, %s) RETURNING id, slug, name",
                (slug, display_name),
            )
            organization = cursor.fetchone()
    except psycopg.errors.UniqueViolation as error:
        if error.diag.constraint_name == ORGANIZATION_SLUG_CONSTRAINT:
            raise ProjectStoreError(f"an organization with slug {slug!r} already exists") from None
        raise
    assert organization is not None
    return organization


def find_organization(connection: psycopg.Connection, slug: str) -> Organization:
    with connection.cursor(row_factory=class_row(Organization)) as cursor:
        cursor.execute(
            "SELECT id, slug, name FROM organizations WHERE lower(slug) = lower(%s)", (slug,)
        )
        organization = cursor.fetchone()
    if organization is None:
        raise ProjectStoreError(f"no organization with slug {slug!r}")
    return organization


def _slug_taken(connection: psycopg.Connection, organization_id: int, slug: str) -> bool:
    row = connection.execute(
        "SELECT 1 FROM projects WHERE organization_id = %s AND lower(slug) = lower(%s)",
        (organization_id, slug),
    ).fetchone()
    return row is not None


def create_project(
    connection: psycopg.Connection,
    redis: Redis,
    generate_id: Callable[[], int],
    organization_slug: str,
    name: str,
    platform: str | None = None,
    lock_wait_seconds: float = SLUG_LOCK_ACQUIRE_SECONDS,
) -> Project:
    if not name.strip():
        raise ProjectStoreError("project name must not be empty")
    if len(name) > MAX_PROJECT_NAME_LENGTH:
        raise ProjectStoreError(f"project name is longer than {MAX_PROJECT_NAME_LENGTH} characters")
    if platform is not None and len(platform) > MAX_PLATFORM_LENGTH:
        raise ProjectStoreError(f"platform is longer than {MAX_PLATFORM_LENGTH} characters")
    organization = find_organization(connection, organization_slug)
    lock = redis.lock(
        project_slug_lock_key(organization.id),
        timeout=SLUG_LOCK_LEASE_SECONDS,
        blocking_timeout=lock_wait_seconds,
    )
    if not lock.acquire():
        raise ProjectStoreError(
            f"could not take the slug lock of organization {organization.slug!r} within "
            f"{lock_wait_seconds:g} s; try again"
        )
    try:
        return _insert_project(connection, generate_id, organization, name, platform)
    finally:
        try:
            lock.release()
        except LockError:
            # The lease ran out while we worked; the UNIQUE index kept the slug safe anyway.
            logger.warning(
                "slug lock lease expired before release", extra={"organization": organization.id}
            )


def _insert_project_row(
    connection: psycopg.Connection,
    organization_id: int,
    name: str,
    slug: str,
    platform: str | None,
    project_id: int,
) -> None:
    connection.execute(
        "INSERT INTO projects (id, organization_id, name, slug, platform) "
        "VALUES (%s, %s, %s, %s, %s)",
        (project_id, organization_id, name, slug, platform),
    )


def _insert_project(
    connection: psycopg.Connection,
    generate_id: Callable[[], int],
    organization: Organization,
    name: str,
    platform: str | None,
) -> Project:
    for _ in range(MAX_SLUG_CONFLICTS):
        slug = choose_slug(
            name, lambda candidate: _slug_taken(connection, organization.id, candidate)
        )
        try:
            with connection.transaction():
                project_id = save_with_snowflake_retry(
                    connection,
                    functools.partial(
                        _insert_project_row, connection, organization.id, name, slug, platform
                    ),
                    generate_id,
                )
        except psycopg.errors.UniqueViolation as error:
            if error.diag.constraint_name != PROJECT_SLUG_CONSTRAINT:
                raise
            logger.info("project slug taken concurrently, choosing again", extra={"slug": slug})
            continue
        return Project(project_id, organization.id, name, slug, platform, DEFAULT_PROJECT_FLAGS)
    raise ProjectStoreError(f"could not find a free slug for {name!r}; try again")


def list_projects(
    connection: psycopg.Connection, organization_slug: str | None = None
) -> list[Project]:
    with connection.cursor(row_factory=class_row(Project)) as cursor:
        if organization_slug is None:
            cursor.execute(
                "SELECT id, organization_id, name, slug, platform, flags FROM projects "
                "ORDER BY organization_id, lower(slug)"
            )
        else:
            organization = find_organization(connection, organization_slug)
            cursor.execute(
                "SELECT id, organization_id, name, slug, platform, flags FROM projects "
                "WHERE organization_id = %s ORDER BY lower(slug)",
                (organization.id,),
            )
        return cursor.fetchall()

"""`workers orgs create` and `workers projects create | list`."""

from __future__ import annotations

import click
import psycopg
from redis import Redis

from workers.common.projects.store import (
    ProjectStoreError,
    create_organization,
    create_project,
    list_projects,
)
from workers.common.settings import Settings
from workers.common.snowflake import SentrySnowflakeGenerator

PROJECT_SNOWFLAKE_KEY = "project_snowflake_key"


def _connect(settings: Settings) -> psycopg.Connection:
    return psycopg.connect(settings.database_url, autocommit=True)


@click.group(help="Organizations.")
def orgs() -> None:
    pass


@orgs.command("create", help="Create an organization.")
@click.option("--slug", required=True, help="URL-safe identifier, e.g. acme.")
@click.option("--name", help="Display name (default: the slug).")
def orgs_create(slug: str, name: str | None) -> None:
    settings = Settings.from_env()
    with _connect(settings) as connection:
        try:
            organization = create_organization(connection, slug, name)
        except ProjectStoreError as error:
            raise click.ClickException(str(error)) from None
    click.echo(f"{organization.id}\t{organization.slug}\t{organization.name}")


@click.group(help="Projects.")
def projects() -> None:
    pass


@projects.command("create", help="Create a project; prints its id and slug.")
@click.option("--org", "organization", required=True, help="Organization slug.")
@click.option("--name", required=True, help="Project name (at most 200 characters).")
@click.option("--platform", help="Platform, e.g. python.")
def projects_create(organization: str, name: str, platform: str | None) -> None:
    settings = Settings.from_env()
    redis = Redis.from_url(settings.redis_url)
    generator = SentrySnowflakeGenerator(
        redis, key=PROJECT_SNOWFLAKE_KEY, region=settings.snowflake_region
    )
    try:
        with _connect(settings) as connection:
            project = create_project(
                connection, redis, generator.generate, organization, name, platform
            )
    except ProjectStoreError as error:
        raise click.ClickException(str(error)) from None
    finally:
        redis.close()
    click.echo(f"{project.id}\t{project.slug}\t{project.name}")


@projects.command("list", help="List projects, optionally of one organization.")
@click.option("--org", "organization", help="Organization slug.")
def projects_list(organization: str | None) -> None:
    settings = Settings.from_env()
    with _connect(settings) as connection:
        try:
            found = list_projects(connection, organization)
        except ProjectStoreError as error:
            raise click.ClickException(str(error)) from None
    click.echo("ID\tORGANIZATION\tSLUG\tNAME\tPLATFORM\tFLAGS")
    for project in found:
        click.echo(
            f"{project.id}\t{project.organization_id}\t{project.slug}\t{project.name}\t"
            f"{project.platform or '-'}\t{project.flags}"
        )

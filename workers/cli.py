"""The `workers` command line: run consumers, manage the local stack, migrate, create topics."""

from __future__ import annotations

import sys

import click

from workers.blob_ingest.cli import blobs, chunks
from workers.common.database import MigrationError, apply_migrations
from workers.common.logs import configure_logging
from workers.common.projects.cli import orgs, projects
from workers.common.registry import load_registry
from workers.common.run_cli import make_run_command
from workers.common.settings import Settings, SettingsError
from workers.common.snowflake.cli import ids
from workers.common.topics import create_topics, fleet_topics
from workers.demo import make_demo_command
from workers.dlq.cli import make_dlq_group
from workers.files.cli import files
from workers.fleet import FLEET_REGISTRY_LOADER
from workers.gateway.cli import serve, tokens
from workers.groups.cli import make_groups_group
from workers.stack.cli import stack


def make_cli(registry_loader: str) -> click.Group:
    @click.group(help=__doc__)
    def cli() -> None:
        pass

    @cli.command(help="Apply pending PostgreSQL migrations (idempotent).")
    def migrate() -> None:
        settings = Settings.from_env()
        configure_logging(settings.log_level, settings.log_format)
        try:
            applied = apply_migrations(settings.database_url)
        except MigrationError as error:
            raise click.ClickException(str(error)) from None
        if applied:
            for migration in applied:
                click.echo(f"applied {migration.version:04d}_{migration.name}")
        else:
            click.echo("database is up to date")

    @cli.group(help="Kafka topics of the fleet.")
    def topics() -> None:
        pass

    @topics.command("create", help="Create every topic the registered workers use.")
    @click.option("--partitions", type=click.IntRange(min=1), help="Partitions per new topic.")
    @click.option(
        "--replication-factor",
        type=click.IntRange(min=1),
        help="Replicas per partition of a new topic. Default: the number of brokers, at most "
        "3; min.insync.replicas is 2 from 3 replicas on, else 1.",
    )
    def topics_create(partitions: int | None, replication_factor: int | None) -> None:
        settings = Settings.from_env()
        configure_logging(settings.log_level, settings.log_format)
        specs = fleet_topics(
            load_registry(registry_loader), partitions or settings.topic_partitions
        )
        for result in create_topics(settings, specs, replication_factor):
            line = (
                f"{result.name:<40} {result.state:<8} partitions={result.partitions}"
                f" replication={result.replication_factor}"
            )
            click.echo(line + (f"  WARNING: {result.warning}" if result.warning else ""))

    @cli.command("config", help="Print the effective settings (credentials masked).")
    def show_config() -> None:
        for key, value in Settings.from_env().redacted().items():
            click.echo(f"{key} = {value}")

    cli.add_command(make_demo_command(registry_loader))
    cli.add_command(make_run_command(registry_loader))
    cli.add_command(make_dlq_group(registry_loader))
    cli.add_command(make_groups_group(registry_loader))
    cli.add_command(stack)
    cli.add_command(ids)
    cli.add_command(orgs)
    cli.add_command(projects)
    cli.add_command(chunks)
    cli.add_command(blobs)
    cli.add_command(files)
    cli.add_command(serve)
    cli.add_command(tokens)
    return cli


def main() -> None:
    try:
        make_cli(FLEET_REGISTRY_LOADER)()
    except SettingsError as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(2)

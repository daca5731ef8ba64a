"""`workers stack up | status | down`: the local Kafka, PostgreSQL and Redis."""

from __future__ import annotations

import click

from workers.common.local_kafka import BROKER_COUNTS
from workers.common.settings import Settings, SettingsError
from workers.stack import (
    StackError,
    format_status,
    kafka_note,
    stack_down,
    stack_status,
    stack_up,
)


def _settings(context: click.Context) -> Settings:
    # The root CLI may have put (flag-overridden) settings on the context; else read the env.
    given = context.find_object(Settings)
    if given is not None:
        return given
    try:
        return Settings.from_env()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


@click.group(name="stack")
def stack() -> None:
    """Run Kafka, PostgreSQL and Redis locally on 127.0.0.1 (no Docker needed).

    State (jars, data, logs, pid files) lives in WORKERS_STATE_DIR, default `.stack`.
    Kafka is one broker, or three with `up --brokers 3` (remembered until changed).
    A service whose URL variable is set (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL,
    REDIS_URL) is external: it is health-checked, never started or stopped.
    """


@stack.command()
@click.option(
    "--brokers",
    type=click.Choice([str(count) for count in BROKER_COUNTS]),
    help="Kafka brokers to run: 1, or a 3-node cluster (replication factor 3, "
    "min.insync.replicas 2). Remembered for later runs; default: the last choice, else 1.",
)
@click.pass_context
def up(context: click.Context, brokers: str | None) -> None:
    """Start every service that is not running and wait until all answer."""
    settings = _settings(context)
    try:
        stack_up(settings, click.echo, brokers=None if brokers is None else int(brokers))
    except StackError as error:
        raise click.ClickException(str(error)) from None


@stack.command()
@click.pass_context
def status(context: click.Context) -> None:
    """Health-check every service (each Kafka broker); exit status 1 when any is down."""
    settings = _settings(context)
    try:
        statuses = stack_status(settings)
        note = kafka_note(settings)
    except StackError as error:
        raise click.ClickException(str(error)) from None
    for service in statuses:
        click.echo(format_status(service))
    if note is not None:
        click.echo(note)
    if any(service.state == "down" for service in statuses):
        context.exit(1)


@stack.command()
@click.pass_context
def down(context: click.Context) -> None:
    """Stop the services `up` started (data is kept; external services are left alone)."""
    try:
        stack_down(_settings(context), click.echo)
    except StackError as error:
        raise click.ClickException(str(error)) from None

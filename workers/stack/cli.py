"""`workers stack up | status | down`: the local Kafka, PostgreSQL and Redis."""

from __future__ import annotations

import click

from workers.common.settings import Settings, SettingsError
from workers.stack import StackError, format_status, stack_down, stack_status, stack_up


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
    A service whose URL variable is set (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL,
    REDIS_URL) is external: it is health-checked, never started or stopped.
    """


@stack.command()
@click.pass_context
def up(context: click.Context) -> None:
    """Start every service that is not running and wait until all answer."""
    settings = _settings(context)
    try:
        stack_up(settings, click.echo)
    except StackError as error:
        raise click.ClickException(str(error)) from None


@stack.command()
@click.pass_context
def status(context: click.Context) -> None:
    """Health-check every service; exit status 1 when any is down."""
    try:
        statuses = stack_status(_settings(context))
    except StackError as error:
        raise click.ClickException(str(error)) from None
    for service in statuses:
        click.echo(format_status(service))
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

"""`workers ids`: generate snowflake ids of either layout, decode any id."""

from __future__ import annotations

import re

import click
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from workers.common.logs import configure_logging
from workers.common.settings import Settings
from workers.common.snowflake.errors import InvalidSnowflakeId, SnowflakeError
from workers.common.snowflake.layouts import SnowflakeLayout, decode_snowflake_id
from workers.common.snowflake.lease import WorkerIdLeases, lease_redis_client
from workers.common.snowflake.leased_layout import LeasedIdParts, LeasedSnowflakeGenerator
from workers.common.snowflake.sentry_layout import SentrySnowflakeGenerator

DEFAULT_CLI_KEY = "cli"
#: Blob ids are printed in chunks of this many lines.
_ECHO_CHUNK = 10_000
_REDIS_TIMEOUT_SECONDS = 2.0
_DECIMAL = re.compile(r"[0-9]+")


@click.group(help="Snowflake ids: generate them (Sentry or blob layout) and decode them.")
def ids() -> None:
    pass


@ids.command(
    "generate",
    help="Print COUNT new ids, one per line. Sentry layout: region from "
    "WORKERS_SNOWFLAKE_REGION, at most 16 ids per second per region and key (a burst of "
    "up to 4800). Blob layout: leases a worker id for the duration of the command.",
)
@click.option(
    "--layout",
    type=click.Choice([layout.value for layout in SnowflakeLayout]),
    default=SnowflakeLayout.SENTRY.value,
    show_default=True,
)
@click.option("--count", type=click.IntRange(min=1, max=10_000_000), default=1, show_default=True)
@click.option(
    "--key",
    default=DEFAULT_CLI_KEY,
    show_default=True,
    help="Sentry layout: the counter key (ids are unique per key and region, e.g. "
    "project_snowflake_key). Blob layout: the worker-id namespace (unique per namespace).",
)
def generate(layout: str, count: int, key: str) -> None:
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)
    if layout == SnowflakeLayout.SENTRY:
        client: Redis = Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=_REDIS_TIMEOUT_SECONDS,
            socket_timeout=_REDIS_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), retries=1),
        )
    else:
        client = lease_redis_client(settings.redis_url)
    try:
        if layout == SnowflakeLayout.SENTRY:
            sentry = SentrySnowflakeGenerator(client, key, settings.snowflake_region)
            for _ in range(count):
                click.echo(sentry.generate())
        else:
            with LeasedSnowflakeGenerator(WorkerIdLeases(client, key)) as leased:
                for start in range(0, count, _ECHO_CHUNK):
                    batch = leased.generate_batch(min(_ECHO_CHUNK, count - start))
                    click.echo("\n".join(map(str, batch)))
    except (SnowflakeError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    finally:
        client.close()


@ids.command(
    "decode",
    help="Print the layout, UTC timestamp, region or worker id, and sequence of ID. "
    "Detection: an id below 2**53 is Sentry layout (version bits 16 in bits 48-52), "
    "2**53 to 2**63-1 is blob layout; blob ids start at 2**53, so no id is ambiguous.",
)
@click.argument("snowflake_id", metavar="ID")
@click.option(
    "--layout",
    type=click.Choice(["auto", *(layout.value for layout in SnowflakeLayout)]),
    default="auto",
    show_default=True,
    help="Decode as this layout instead of detecting it.",
)
def decode(snowflake_id: str, layout: str) -> None:
    if _DECIMAL.fullmatch(snowflake_id) is None:
        raise click.ClickException(f"ID must be a positive decimal integer, got {snowflake_id!r}")
    chosen = None if layout == "auto" else SnowflakeLayout(layout)
    try:
        parts = decode_snowflake_id(int(snowflake_id), chosen)
    except InvalidSnowflakeId as error:
        raise click.ClickException(str(error)) from None
    if isinstance(parts, LeasedIdParts):
        click.echo(f"layout: {SnowflakeLayout.BLOB.value}")
        click.echo(f"timestamp: {parts.timestamp.isoformat(timespec='milliseconds')}")
        click.echo(f"worker_id: {parts.worker_id}")
    else:
        click.echo(f"layout: {SnowflakeLayout.SENTRY.value}")
        click.echo(f"timestamp: {parts.timestamp.isoformat()}")
        click.echo(f"region: {parts.region}")
    click.echo(f"sequence: {parts.sequence}")

"""`workers serve gateway` and `workers tokens create / list / revoke` (docs/gateway.md, Tokens)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import click
import psycopg
import uvicorn
from prometheus_client import CollectorRegistry

from workers.common.assemble_requests import ASSEMBLE_REQUESTS_TOPIC
from workers.common.chunk_uploads import CHUNK_UPLOADS_TOPIC
from workers.common.durations import parse_duration
from workers.common.logs import configure_logging
from workers.common.metrics import start_metrics_server
from workers.common.projects import ProjectStoreError
from workers.common.settings import Settings
from workers.common.signals import handling_shutdown_signals
from workers.gateway.app import create_app
from workers.gateway.assemble import DEFAULT_MAX_ASSEMBLE_BYTES
from workers.gateway.http_protocol import header_timeout_protocol
from workers.gateway.metrics import GatewayMetrics
from workers.gateway.pacing import BodyPace
from workers.gateway.pending import DEFAULT_TTL_SECONDS
from workers.gateway.services import (
    DEFAULT_MAX_CONCURRENT_ASSEMBLES,
    DEFAULT_MAX_CONCURRENT_UPLOADS,
    DEFAULT_PRODUCE_TIMEOUT_SECONDS,
    GatewayConfig,
    open_services,
)
from workers.gateway.tokens import (
    KNOWN_SCOPES,
    MAX_LIFETIME,
    TokenError,
    TokenInfo,
    check_lifetime,
    create_token,
    list_tokens,
    revoke_token,
)
from workers.gateway.upload_slots import DEFAULT_MAX_WAIT_SECONDS

logger = logging.getLogger(__name__)


class _GatewayServer(uvicorn.Server):
    """uvicorn's server, but a SIGTERM/SIGINT ends in a clean exit (status 0) after the
    graceful shutdown instead of re-raising the signal (a second signal forces the exit)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with handling_shutdown_signals(self.handle_exit):
            yield


@dataclass(frozen=True)
class ConnectionLimits:
    """What the HTTP server allows a connection (docs/gateway.md, Slow and greedy clients)."""

    header_timeout_seconds: float = 10.0
    max_connections: int = 256
    keep_alive_seconds: int = 5


def run_gateway(
    settings: Settings,
    config: GatewayConfig,
    host: str,
    port: int,
    metrics_port: int | None,
    connections: ConnectionLimits | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (uvicorn's graceful shutdown), then close everything."""
    connections = connections or ConnectionLimits()
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    metrics_server = (
        start_metrics_server(metrics_port, registry) if metrics_port is not None else None
    )
    app = create_app(functools.partial(open_services, settings, config, metrics))
    server = _GatewayServer(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="on",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=30,
            http=header_timeout_protocol(
                connections.header_timeout_seconds, lambda: metrics.rejected("header_timeout")
            ),
            loop="uvloop",  # a C event loop: cheaper reads and timers than asyncio's
            # Connections (and requests) beyond this are answered 503 at once.
            limit_concurrency=connections.max_connections,
            timeout_keep_alive=connections.keep_alive_seconds,
        )
    )
    logger.info(
        "gateway starting",
        extra={
            "host": host,
            "port": port,
            "metrics_port": metrics_port,
            "topic": config.topic,
            "assemble_topic": config.assemble_topic,
        },
    )
    try:
        server.run()
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()


@click.group(help="Servers of the fleet.")
def serve() -> None:
    pass


@serve.command("gateway", help="The chunk-upload gateway (sentry-cli compatible) over HTTP.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus /metrics on this port (separate from the API).",
)
@click.option("--topic", default=CHUNK_UPLOADS_TOPIC, show_default=True, help="Where chunks go.")
@click.option(
    "--assemble-topic",
    default=ASSEMBLE_REQUESTS_TOPIC,
    show_default=True,
    help="Where the files to assemble go (the assemble worker's input).",
)
@click.option(
    "--public-url", help="Base URL clients reach the gateway by (default: GATEWAY_PUBLIC_URL)."
)
@click.option(
    "--upload-url-prefix",
    help="Base URL every client is told to upload to (default: GATEWAY_UPLOAD_URL_PREFIX).",
)
@click.option(
    "--upload-compression",
    help="Codecs advertised to clients: gzip,zstd, gzip, zstd or none "
    "(default: GATEWAY_UPLOAD_COMPRESSION, else gzip,zstd).",
)
@click.option(
    "--produce-timeout-ms",
    type=click.IntRange(min=1000),
    default=int(DEFAULT_PRODUCE_TIMEOUT_SECONDS * 1000),
    show_default=True,
    help="How long a request waits for Kafka to acknowledge its chunks (or its files to "
    "assemble) before answering 503.",
)
@click.option(
    "--pending-ttl",
    type=click.IntRange(min=1),
    default=DEFAULT_TTL_SECONDS,
    show_default=True,
    help="Seconds an accepted chunk counts as on its way to blob-ingest.",
)
@click.option(
    "--max-concurrent-uploads",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_CONCURRENT_UPLOADS,
    show_default=True,
    help="Upload requests buffering chunks at once (each up to about 33 MiB); others wait.",
)
@click.option(
    "--max-uploads-per-org",
    type=click.IntRange(min=1),
    help="Upload slots one organization may hold at once (default: half, at least one).",
)
@click.option(
    "--upload-slot-wait-ms",
    type=click.IntRange(min=1),
    default=int(DEFAULT_MAX_WAIT_SECONDS * 1000),
    show_default=True,
    help="How long an upload waits for a slot before a 503 with Retry-After.",
)
@click.option(
    "--header-timeout-ms",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="A request's headers must be complete this soon after its first byte.",
)
@click.option(
    "--body-idle-timeout-ms",
    type=click.IntRange(min=1),
    default=int(BodyPace().idle_seconds * 1000),
    show_default=True,
    help="An upload body stalled this long is answered 408.",
)
@click.option(
    "--min-upload-rate",
    type=click.IntRange(min=0),
    default=BodyPace().min_bytes_per_second,
    show_default=True,
    help="Bytes per second an upload body must average after its first 10 s (else 408).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=ConnectionLimits().max_connections,
    show_default=True,
    help="Open connections beyond this are answered 503 at once.",
)
@click.option(
    "--max-concurrent-assembles",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_CONCURRENT_ASSEMBLES,
    show_default=True,
    help="Assemble requests answered at once; others wait.",
)
@click.option(
    "--max-assembles-per-org",
    type=click.IntRange(min=1),
    help="Assemble requests one organization may have answered at once (default: half).",
)
@click.option(
    "--assemble-slot-wait-ms",
    type=click.IntRange(min=1),
    default=int(DEFAULT_MAX_WAIT_SECONDS * 1000),
    show_default=True,
    help="How long an assemble request waits for its turn before a 503 with Retry-After.",
)
@click.option(
    "--max-assemble-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_ASSEMBLE_BYTES,
    show_default=True,
    help="Bytes of chunks one assemble request may enqueue for the assemble worker (each "
    "chunk counts at least 1 MiB); files beyond it are answered `error`.",
)
@click.option("--log-level", help="DEBUG, INFO, WARNING, ERROR or CRITICAL.")
def serve_gateway(
    host: str,
    port: int,
    metrics_port: int | None,
    topic: str,
    assemble_topic: str,
    public_url: str | None,
    upload_url_prefix: str | None,
    upload_compression: str | None,
    produce_timeout_ms: int,
    pending_ttl: int,
    max_concurrent_uploads: int,
    max_uploads_per_org: int | None,
    upload_slot_wait_ms: int,
    header_timeout_ms: int,
    body_idle_timeout_ms: int,
    min_upload_rate: int,
    max_connections: int,
    max_concurrent_assembles: int,
    max_assembles_per_org: int | None,
    assemble_slot_wait_ms: int,
    max_assemble_bytes: int,
    log_level: str | None,
) -> None:
    environ = dict(os.environ)
    if public_url is not None:
        environ["GATEWAY_PUBLIC_URL"] = public_url
    if upload_url_prefix is not None:
        environ["GATEWAY_UPLOAD_URL_PREFIX"] = upload_url_prefix
    if upload_compression is not None:
        environ["GATEWAY_UPLOAD_COMPRESSION"] = upload_compression
    settings = Settings.from_env(environ).with_overrides(log_level=log_level)
    configure_logging(settings.log_level, settings.log_format)
    config = GatewayConfig(
        public_url=settings.gateway_public_url,
        upload_url_prefix=settings.gateway_upload_url_prefix,
        upload_compression=settings.gateway_upload_compression,
        topic=topic,
        assemble_topic=assemble_topic,
        produce_timeout_seconds=produce_timeout_ms / 1000,
        pending_ttl_seconds=pending_ttl,
        max_concurrent_uploads=max_concurrent_uploads,
        max_uploads_per_organization=max_uploads_per_org,
        upload_slot_wait_seconds=upload_slot_wait_ms / 1000,
        body_pace=BodyPace(
            idle_seconds=body_idle_timeout_ms / 1000, min_bytes_per_second=min_upload_rate
        ),
        max_concurrent_assembles=max_concurrent_assembles,
        max_assembles_per_organization=max_assembles_per_org,
        assemble_slot_wait_seconds=assemble_slot_wait_ms / 1000,
        max_assemble_bytes=max_assemble_bytes,
    )
    connections = ConnectionLimits(
        header_timeout_seconds=header_timeout_ms / 1000, max_connections=max_connections
    )
    run_gateway(settings, config, host, port, metrics_port, connections)


@click.group(help="API tokens of the chunk-upload gateway.")
def tokens() -> None:
    pass


def _lifetime(ctx: click.Context, param: click.Parameter, value: str | None) -> timedelta | None:
    if value is None:
        return None
    try:
        return check_lifetime(parse_duration(value))
    except (ValueError, TokenError) as error:
        raise click.BadParameter(str(error), ctx, param) from None


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


LIST_HEADER = "ID\tNAME\tPREFIX\tSCOPES\tCREATED\tEXPIRES\tLAST_USED\tREVOKED"


def token_row(token: TokenInfo) -> str:
    """One tab-separated line of `workers tokens list`: no secret, no hash."""
    return "\t".join(
        (
            str(token.token_id),
            token.name or "-",
            token.shown_prefix,
            ",".join(token.scopes),
            _when(token.created_at),
            _when(token.expires_at),
            _when(token.last_used_at),
            _when(token.revoked_at),
        )
    )


@tokens.command("create", help="Create a token for an organization; prints it once.")
@click.option("--org", "organization", required=True, help="Organization slug.")
@click.option(
    "--scopes",
    required=True,
    multiple=True,
    help=f"Scopes, comma or space separated ({', '.join(sorted(KNOWN_SCOPES))}).",
)
@click.option("--name", help="A note to tell tokens apart.")
@click.option(
    "--expires-in",
    "expires_in",
    callback=_lifetime,
    metavar="DURATION",
    help=f"Refuse the token after this long: 90m, 12h, 30d (at most {MAX_LIFETIME.days}d). "
    "Default: it never expires.",
)
def tokens_create(
    organization: str, scopes: tuple[str, ...], name: str | None, expires_in: timedelta | None
) -> None:
    settings = Settings.from_env()
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        try:
            created = create_token(connection, organization, scopes, name, expires_in)
        except (ProjectStoreError, TokenError) as error:
            raise click.ClickException(str(error)) from None
    click.echo(created.token)
    expiry = (
        "never expires" if created.expires_at is None else f"expires {_when(created.expires_at)}"
    )
    click.echo(
        f"token {created.token_id} for {created.organization_slug} with scopes "
        f"{' '.join(created.scopes)}; it {expiry}; it is shown only now, store it safely.",
        err=True,
    )


@tokens.command("list", help="The tokens of an organization (never their secrets).")
@click.option("--org", "organization", required=True, help="Organization slug.")
def tokens_list(organization: str) -> None:
    settings = Settings.from_env()
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        try:
            found = list_tokens(connection, organization)
        except ProjectStoreError as error:
            raise click.ClickException(str(error)) from None
    click.echo(LIST_HEADER)
    for token in found:
        click.echo(token_row(token))


@tokens.command("revoke", help="Refuse a token from its next request on (idempotent).")
@click.argument("token_id", metavar="ID", type=click.IntRange(min=1))
def tokens_revoke(token_id: int) -> None:
    settings = Settings.from_env()
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        try:
            revocation = revoke_token(connection, token_id)
        except TokenError as error:
            raise click.ClickException(str(error)) from None
    what = (
        f"token {revocation.token_id} ({revocation.shown_prefix}) of {revocation.organization_slug}"
    )
    if revocation.already_revoked:
        click.echo(f"{what} was already revoked at {_when(revocation.revoked_at)}")
    else:
        click.echo(f"{what} revoked at {_when(revocation.revoked_at)}")

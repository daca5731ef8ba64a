"""`workers run NAME [options] [worker options]`, modelled on Sentry's `sentry run consumer`.

Options shared by every consumer are declared here; a worker's own options come from its
definition's `click_options` and are parsed from whatever arguments are left over.
`workers run NAME --help` lists the shared options, then NAME's own in a section of their
own (`RunCommand`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from arroyo.dlq import DlqLimit
from prometheus_client import CollectorRegistry

from workers.common.dlq_limit import (
    DEFAULT_DLQ_MAX_CONSECUTIVE_INVALID,
    DEFAULT_DLQ_MAX_INVALID_RATIO,
    DlqLimitExceeded,
)
from workers.common.kafka_config import (
    DEFAULT_COMMIT_INTERVAL_MS,
    DEFAULT_MAX_POLL_INTERVAL_MS,
    GROUP_PROTOCOL_CONSUMER,
    GROUP_PROTOCOLS,
)
from workers.common.logs import configure_logging
from workers.common.registry import (
    ConsumerDefinition,
    ConsumerRegistry,
    UnknownConsumerError,
    load_registry,
)
from workers.common.runner import DEFAULT_JOIN_TIMEOUT_SECONDS, RunOptions, run_worker_process
from workers.common.settings import Settings
from workers.common.supervisor import Supervisor

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
# Where `RunCommand.parse_args` leaves the definition whose options `--help` lists.
_HELP_DEFINITION = "workers.run.help_definition"


class OrOff(click.ParamType[Any, Any]):
    """A value of `inner`, or `off` (None): a limit that can be switched off."""

    def __init__(self, inner: click.ParamType[Any, Any]) -> None:
        self.inner = inner
        self.name = f"{inner.name} or off"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() == "off"):
            return None
        return self.inner.convert(value, param, ctx)


class RunCommand(click.Command):
    """`workers run`; with a NAME, `--help` also lists the options of that worker."""

    def __init__(self, *args: Any, registry_loader: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.registry_loader = registry_loader

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if any(arg in ctx.help_option_names for arg in args):
            parsed, _, _ = self.make_parser(ctx).parse_args(args=list(args))
            name = parsed.get("name")
            if isinstance(name, str) and not name.startswith("-"):
                try:
                    definition = load_registry(self.registry_loader).get(name)
                except UnknownConsumerError as error:
                    raise click.UsageError(str(error), ctx) from None
                ctx.meta[_HELP_DEFINITION] = definition
        return super().parse_args(ctx, args)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_options(ctx, formatter)
        definition: ConsumerDefinition | None = ctx.meta.get(_HELP_DEFINITION)
        if definition is None:
            return
        rows = [
            record
            for param in definition.click_options
            if (record := param.get_help_record(ctx)) is not None
        ]
        with formatter.section(f"Options of {definition.name}"):
            formatter.write_text(definition.description)
            if rows:
                formatter.write_paragraph()
                formatter.write_dl(rows)


def format_registry(registry: ConsumerRegistry) -> str:
    rows = [("NAME", "TOPIC", "DLQ TOPIC", "GROUP", "DESCRIPTION")]
    rows += [
        (d.name, d.topic, d.dlq_topic or "-", d.consumer_group, d.description) for d in registry
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        for row in rows
    )


def parse_worker_options(definition: ConsumerDefinition, args: tuple[str, ...]) -> dict[str, Any]:
    command = click.Command(
        f"workers run {definition.name}",
        params=list(definition.click_options),
        callback=lambda **values: values,
    )
    try:
        parsed: dict[str, Any] = command.main(
            args=list(args), standalone_mode=False, prog_name=f"workers run {definition.name}"
        )
    except click.UsageError as error:
        raise click.UsageError(f"{definition.name}: {error.format_message()}") from None
    return parsed


def make_run_command(registry_loader: str) -> click.Command:
    @click.command(
        "run",
        cls=RunCommand,
        registry_loader=registry_loader,
        context_settings={"ignore_unknown_options": True, "show_default": True},
        help="Run the consumer NAME until SIGTERM/SIGINT; `--list` shows every NAME, "
        "`NAME --help` its own options too.",
    )
    @click.argument("name", required=False)
    @click.argument("worker_args", nargs=-1, type=click.UNPROCESSED)
    @click.option("--list", "list_only", is_flag=True, help="List registered consumers.")
    @click.option("--topic", help="Input topic (default: the consumer's own).")
    @click.option("--consumer-group", help="Consumer group (default: the consumer's own).")
    @click.option(
        "--auto-offset-reset",
        type=click.Choice(["earliest", "latest", "error"]),
        default="earliest",
        help="Where to start when the group has no committed offset.",
    )
    @click.option("--max-batch-size", type=click.IntRange(min=1), help="Messages per batch.")
    @click.option(
        "--max-batch-time-ms", type=click.IntRange(min=1), help="Longest wait to fill a batch."
    )
    @click.option(
        "--processes",
        type=click.IntRange(min=1),
        default=1,
        help="Consumer processes (each a group member).",
    )
    @click.option(
        "--healthcheck-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Touched while the loop is alive (Kubernetes liveness probe).",
    )
    @click.option(
        "--enable-dlq/--disable-dlq", default=True, help="Route invalid messages to the DLQ."
    )
    @click.option(
        "--join-timeout",
        type=click.FloatRange(min=0.0),
        default=DEFAULT_JOIN_TIMEOUT_SECONDS,
        help="Seconds in-flight work may take to finish on rebalance or shutdown.",
    )
    @click.option(
        "--max-poll-interval-ms",
        type=click.IntRange(min=1000),
        default=DEFAULT_MAX_POLL_INTERVAL_MS,
        help="librdkafka max.poll.interval.ms.",
    )
    @click.option(
        "--commit-interval-ms",
        type=click.IntRange(min=10),
        default=DEFAULT_COMMIT_INTERVAL_MS,
        help="How often processed offsets are committed.",
    )
    @click.option("--group-instance-id", help="Static group membership id (KIP-345).")
    @click.option(
        "--group-protocol",
        type=click.Choice(GROUP_PROTOCOLS),
        default=GROUP_PROTOCOL_CONSUMER,
        show_default=True,
        help="consumer: Kafka 4's incremental protocol (KIP-848); classic: eager, older brokers.",
    )
    @click.option(
        "--dlq-max-invalid-ratio",
        type=OrOff(click.FloatRange(min=0.0)),
        default=DEFAULT_DLQ_MAX_INVALID_RATIO,
        metavar="RATIO|off",
        help="Stop when a partition's invalid messages exceed this ratio to its valid ones "
        "since it was assigned.",
    )
    @click.option(
        "--dlq-max-consecutive-invalid",
        type=OrOff(click.IntRange(min=0)),
        default=DEFAULT_DLQ_MAX_CONSECUTIVE_INVALID,
        metavar="N|off",
        help="Stop when more than N invalid messages in a row arrive on a partition.",
    )
    @click.option(
        "--metrics-port",
        type=click.IntRange(min=0, max=65535),
        help="Serve Prometheus /metrics on this port.",
    )
    @click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False))
    def run(
        name: str | None,
        worker_args: tuple[str, ...],
        list_only: bool,
        topic: str | None,
        consumer_group: str | None,
        auto_offset_reset: str,
        max_batch_size: int | None,
        max_batch_time_ms: int | None,
        processes: int,
        healthcheck_file: Path | None,
        enable_dlq: bool,
        join_timeout: float,
        max_poll_interval_ms: int,
        commit_interval_ms: int,
        group_instance_id: str | None,
        group_protocol: str,
        dlq_max_invalid_ratio: float | None,
        dlq_max_consecutive_invalid: int | None,
        metrics_port: int | None,
        log_level: str | None,
    ) -> None:
        registry = load_registry(registry_loader)
        if list_only:
            click.echo(format_registry(registry))
            return
        if name is None:
            raise click.UsageError("missing consumer NAME (see `workers run --list`)")
        try:
            definition = registry.get(name)
        except UnknownConsumerError as error:
            raise click.UsageError(str(error)) from None
        if max_poll_interval_ms / 1000.0 <= join_timeout:
            raise click.UsageError(
                f"--max-poll-interval-ms ({max_poll_interval_ms}) must exceed --join-timeout "
                f"({join_timeout} s), or the member is evicted while it joins"
            )
        if processes > 1 and group_instance_id:
            raise click.UsageError("--group-instance-id needs --processes 1 (ids must be unique)")

        settings = Settings.from_env().with_overrides(log_level=log_level)
        configure_logging(settings.log_level, settings.log_format)
        options = RunOptions(
            input_topic=topic or definition.topic,
            consumer_group=consumer_group or definition.consumer_group,
            max_batch_size=max_batch_size or definition.max_batch_size,
            max_batch_time_ms=max_batch_time_ms or definition.max_batch_time_ms,
            auto_offset_reset=auto_offset_reset,
            processes=processes,
            healthcheck_file=healthcheck_file,
            enable_dlq=enable_dlq,
            join_timeout_seconds=join_timeout,
            max_poll_interval_ms=max_poll_interval_ms,
            commit_interval_ms=commit_interval_ms,
            group_instance_id=group_instance_id,
            group_protocol=group_protocol,
            metrics_port=metrics_port,
            dlq_limit=DlqLimit(
                max_invalid_ratio=dlq_max_invalid_ratio,
                max_consecutive_count=dlq_max_consecutive_invalid,
            ),
            worker_options=parse_worker_options(definition, worker_args),
        )
        if processes == 1:
            try:
                run_worker_process(definition, options, settings, CollectorRegistry())
            except DlqLimitExceeded as exceeded:
                raise click.ClickException(str(exceeded)) from None
            return
        multiprocess_dir = Path(
            os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            or settings.state_dir / "metrics" / f"{definition.name}-{os.getpid()}"
        )
        sys.exit(Supervisor(registry_loader, name, options, settings, multiprocess_dir).run())

    return run

"""`workers dlq list | show | replay` (docs/operations.md, DLQ inspection and replay)."""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import click
import psycopg

from workers.common.logs import configure_logging
from workers.common.moments import format_moment, moment_option
from workers.common.registry import ConsumerRegistry, UnknownConsumerError, load_registry
from workers.common.settings import Settings
from workers.dlq.claims import ReplayCounts, claimed_positions
from workers.dlq.letters import Position
from workers.dlq.listing import list_lines, summarize
from workers.dlq.preview import DEFAULT_PREVIEW_BYTES, preview
from workers.dlq.reading import TopicNotFound, read_dead_letters
from workers.dlq.replay import plan_replay, replay, selected_letters
from workers.dlq.selection import Selection
from workers.dlq.show import DEFAULT_LIMIT, newest, show_lines

F = TypeVar("F", bound=Callable[..., Any])


def _selection_options(command: F) -> F:
    for option in reversed(
        (
            click.argument("worker"),
            click.option(
                "--reason", help="Only this reason: its code (invalid_json) or all of it."
            ),
            click.option(
                "--since",
                callback=moment_option,
                help="Dead-lettered at or after (ISO time or 2h).",
            ),
            click.option(
                "--until", callback=moment_option, help="Dead-lettered before (ISO time or 30m)."
            ),
            click.option("--dlq-topic", help="Read this DLQ topic (default: the worker's own)."),
        )
    ):
        command = option(command)
    return command


def _selection(
    registry: ConsumerRegistry,
    worker: str,
    reason: str | None,
    since: datetime | None,
    until: datetime | None,
    dlq_topic: str | None,
) -> Selection:
    try:
        definition = registry.get(worker)
    except UnknownConsumerError as error:
        raise click.UsageError(str(error)) from None
    topic = dlq_topic or definition.dlq_topic
    if topic is None:
        raise click.UsageError(f"{worker} has no DLQ topic; name one with --dlq-topic")
    if since is not None and until is not None and since >= until:
        raise click.UsageError("--since must be before --until")
    return Selection(definition.name, topic, reason, since, until)


def _claims(settings: Settings, dlq_topic: str) -> dict[Position, str] | None:
    """The topic's replay claims; None when PostgreSQL cannot say (down, not migrated)."""
    try:
        with psycopg.connect(settings.database_url, autocommit=True) as connection:
            return claimed_positions(connection, dlq_topic)
    except psycopg.Error:
        return None


def _warn_unknown_claims() -> None:
    click.echo("warning: replay state unknown: PostgreSQL unreachable or not migrated", err=True)


def _requested_by() -> str:
    return os.environ.get("USER") or getpass.getuser()


def make_dlq_group(registry_loader: str) -> click.Group:
    @click.group("dlq", help="Dead-letter queues: what is in them and why, and replay.")
    def dlq() -> None:
        pass

    @dlq.command("list", help="Per worker: DLQ messages by reason, oldest, newest, replayed.")
    @click.argument("workers", metavar="[WORKER]...", nargs=-1)
    def dlq_list(workers: tuple[str, ...]) -> None:
        settings = Settings.from_env()
        registry = load_registry(registry_loader)
        try:
            wanted = [registry.get(name) for name in workers] or list(registry)
        except UnknownConsumerError as error:
            raise click.UsageError(str(error)) from None
        owners: dict[str, list[str]] = {}
        for definition in registry:
            if definition.dlq_topic:
                owners.setdefault(definition.dlq_topic, []).append(definition.name)
        names = {definition.name for definition in wanted}
        topics = sorted({d.dlq_topic for d in wanted if d.dlq_topic})
        summaries = []
        known = True
        for topic in topics:
            claims = _claims(settings, topic)
            known = known and claims is not None
            try:
                # Streamed: a DLQ of chunks can hold gigabytes.
                found = summarize(
                    topic, owners[topic], read_dead_letters(settings, topic), claims or {}
                )
            except TopicNotFound as error:
                click.echo(f"warning: {error}", err=True)
                found = summarize(topic, owners[topic], [], claims or {})
            summaries += [s for s in found if s.worker in names or not workers]
        if not known:
            _warn_unknown_claims()
        click.echo("\n".join(list_lines(summaries, known)))

    @dlq.command(
        "show",
        help="The newest selected DLQ messages: reason, original position, headers and a "
        "capped payload preview (credentials redacted).",
    )
    @_selection_options
    @click.option("--limit", type=click.IntRange(min=1), default=DEFAULT_LIMIT, show_default=True)
    @click.option(
        "--preview-bytes",
        type=click.IntRange(min=0, max=65536),
        default=DEFAULT_PREVIEW_BYTES,
        show_default=True,
        help="Bytes of each key, header and value shown.",
    )
    def dlq_show(
        worker: str,
        reason: str | None,
        since: datetime | None,
        until: datetime | None,
        dlq_topic: str | None,
        limit: int,
        preview_bytes: int,
    ) -> None:
        settings = Settings.from_env()
        selection = _selection(
            load_registry(registry_loader), worker, reason, since, until, dlq_topic
        )
        claims = _claims(settings, selection.dlq_topic)
        if claims is None:
            _warn_unknown_claims()
        try:
            shown = newest(selected_letters(settings, selection), limit)
        except TopicNotFound as error:
            raise click.ClickException(str(error)) from None
        if not shown:
            click.echo(f"no DLQ messages of {selection.worker} in {selection.dlq_topic} match")
        for index, letter in enumerate(shown):
            if index:
                click.echo("")
            click.echo("\n".join(show_lines(letter, claims or {}, preview_bytes)))

    @dlq.command(
        "replay",
        help="Produce the selected DLQ messages again to their original topic and partition "
        "(original key, value and headers, plus dlq_replayed_from), each at most once ever; "
        "the run is recorded with $USER.",
    )
    @_selection_options
    @click.option("--dry-run", is_flag=True, help="Print what would be replayed; write nothing.")
    @click.option(
        "--retry-unconfirmed",
        is_flag=True,
        help="Also replay selected messages Kafka refused, or an interrupted run left without "
        "an answer, unless the original topic already has them.",
    )
    def dlq_replay(
        worker: str,
        reason: str | None,
        since: datetime | None,
        until: datetime | None,
        dlq_topic: str | None,
        dry_run: bool,
        retry_unconfirmed: bool,
    ) -> None:
        settings = Settings.from_env()
        selection = _selection(
            load_registry(registry_loader), worker, reason, since, until, dlq_topic
        )
        try:
            if dry_run:
                _dry_run(settings, selection, retry_unconfirmed)
            else:
                _replay(settings, selection, retry_unconfirmed)
        except TopicNotFound as error:
            raise click.ClickException(str(error)) from None
        except psycopg.errors.UndefinedTable:
            raise click.ClickException(
                "the replay tables are missing: run `workers migrate` first"
            ) from None

    return dlq


def _dry_run(settings: Settings, selection: Selection, retry_unconfirmed: bool) -> None:
    tally: dict[str, int] = {}
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        for letter, verdict in plan_replay(settings, connection, selection, retry_unconfirmed):
            tally[verdict] = tally.get(verdict, 0) + 1
            origin = letter.origin
            click.echo(
                f"{verdict:<17} {letter.position} -> {origin if origin else '?'}  "
                f"{format_moment(letter.timestamp_ms)}  {preview(letter.reason.encode(), 120)}"
            )
    summary = ", ".join(f"{verdict}: {count}" for verdict, count in sorted(tally.items()))
    click.echo(f"dry run, nothing written; {summary or 'no message matches'}")


def _replay(settings: Settings, selection: Selection, retry_unconfirmed: bool) -> None:
    configure_logging(settings.log_level, settings.log_format)

    def progress(counts: ReplayCounts) -> None:
        click.echo(f"... {counts.selected} selected, {counts.replayed} replayed", err=True)

    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        report = replay(
            settings, connection, selection, _requested_by(), progress, retry_unconfirmed
        )
    counts = report.counts
    for earlier in report.interrupted:
        click.echo(
            f"replay #{earlier} was interrupted: its messages still `claimed` may or may not "
            "have been produced; --retry-unconfirmed checks and finishes them",
            err=True,
        )
    click.echo(
        f"replay #{report.replay_id} of {selection.worker} ({selection.dlq_topic}): "
        f"{counts.selected} selected, {counts.replayed} replayed, "
        f"{counts.already_replayed} already replayed, {counts.unreplayable} unreplayable, "
        f"{counts.failed} failed"
        + (f", {counts.found_replayed} found in the original topic" if retry_unconfirmed else "")
    )
    for error, count in sorted(report.errors.items()):
        click.echo(f"  {count} refused by Kafka: {error}", err=True)
    if counts.failed:
        raise click.ClickException(
            f"{counts.failed} messages were not replayed; once the cause is fixed, "
            "--retry-unconfirmed replays them"
        )

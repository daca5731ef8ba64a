"""`workers groups describe | reset-offsets` (docs/operations.md, Consumer groups)."""

from __future__ import annotations

from datetime import datetime

import click

from workers.common.moments import milliseconds, moment_option
from workers.common.registry import ConsumerDefinition, UnknownConsumerError, load_registry
from workers.common.settings import Settings
from workers.groups.inspect import (
    GroupError,
    admin_client,
    alter_offsets,
    describe_group,
    offsets_at_time,
)
from workers.groups.offsets import Reset, reset_target
from workers.groups.render import describe_lines, reset_lines


def _definition(registry_loader: str, worker: str) -> ConsumerDefinition:
    try:
        return load_registry(registry_loader).get(worker)
    except UnknownConsumerError as error:
        raise click.UsageError(str(error)) from None


def _reset(earliest: bool, latest: bool, moment: datetime | None, shift: int | None) -> Reset:
    chosen = [
        reset
        for given, reset in (
            (earliest, Reset("earliest")),
            (latest, Reset("latest")),
            (moment is not None, Reset("datetime")),
            (shift is not None, Reset("shift", shift or 0)),
        )
        if given
    ]
    if len(chosen) != 1:
        raise click.UsageError(
            "give exactly one of --to-earliest, --to-latest, --to-datetime, --shift"
        )
    return chosen[0]


def make_groups_group(registry_loader: str) -> click.Group:
    @click.group("groups", help="The workers' consumer groups: members, offsets, lag; resets.")
    def groups() -> None:
        pass

    @groups.command(
        "describe",
        help="Members (client id, host, instance id) and their assignment, committed offsets, "
        "high watermarks and lag per partition, state and protocol of WORKER's group.",
    )
    @click.argument("worker")
    @click.option("--group", help="Consumer group (default: the worker's own).")
    @click.option("--topic", help="Input topic (default: the worker's own).")
    def groups_describe(worker: str, group: str | None, topic: str | None) -> None:
        definition = _definition(registry_loader, worker)
        try:
            description = describe_group(
                Settings.from_env(), group or definition.consumer_group, [topic or definition.topic]
            )
        except GroupError as error:
            raise click.ClickException(str(error)) from None
        click.echo("\n".join(describe_lines(description)))

    @groups.command(
        "reset-offsets",
        help="Move the committed offsets of WORKER's group on its input topic; refused while "
        "the group has members (stop the worker first).",
    )
    @click.argument("worker")
    @click.option("--to-earliest", is_flag=True, help="To each partition's first message.")
    @click.option("--to-latest", is_flag=True, help="To each partition's end (skip everything).")
    @click.option(
        "--to-datetime",
        "moment",
        callback=moment_option,
        help="To the first message at or after this time (ISO time or 2h ago).",
    )
    @click.option(
        "--shift", type=int, help="By N messages from the committed offset (negative: back)."
    )
    @click.option("--dry-run", is_flag=True, help="Print the new offsets; change nothing.")
    @click.option("--group", help="Consumer group (default: the worker's own).")
    @click.option("--topic", help="Topic whose offsets move (default: the worker's input).")
    def groups_reset_offsets(
        worker: str,
        to_earliest: bool,
        to_latest: bool,
        moment: datetime | None,
        shift: int | None,
        dry_run: bool,
        group: str | None,
        topic: str | None,
    ) -> None:
        reset = _reset(to_earliest, to_latest, moment, shift)
        definition = _definition(registry_loader, worker)
        group_id = group or definition.consumer_group
        topic_name = topic or definition.topic
        settings = Settings.from_env()
        admin = admin_client(settings)
        try:
            description = describe_group(settings, group_id, [topic_name], admin)
            if description.members:
                members = ", ".join(f"{m.client_id}@{m.host}" for m in description.members)
                raise click.ClickException(
                    f"group {group_id} has {len(description.members)} active member(s) "
                    f"({members}); stop them before resetting its offsets"
                )
            partitions = [p for p in description.partitions if p.topic == topic_name]
            at_time = (
                offsets_at_time(
                    admin, [(p.topic, p.partition) for p in partitions], milliseconds(moment)
                )
                if moment is not None
                else {}
            )
            targets = {
                (p.topic, p.partition): reset_target(p, reset, at_time.get((p.topic, p.partition)))
                for p in partitions
            }
            target = reset.describe()
            if moment is not None:
                target += f" {moment.isoformat()}: the first message at or after it"
            click.echo(f"group {group_id}, {topic_name}: {target}")
            click.echo("\n".join(reset_lines(partitions, targets)))
            if dry_run:
                click.echo("dry run: nothing changed")
                return
            alter_offsets(admin, group_id, targets)
        except GroupError as error:
            raise click.ClickException(str(error)) from None
        click.echo(f"committed the new offsets of {len(targets)} partitions")

    return groups

"""Points in time as commands take them: an ISO 8601 date or time (UTC unless it says
otherwise), or a duration (`30m`, `12h`, `7d`) meaning that long ago."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import click

from workers.common.durations import parse_duration


def parse_moment(text: str, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> datetime:
    """`text` as an aware datetime; ValueError (saying what is accepted) for anything else."""
    try:
        return now() - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r}: use an ISO 8601 time such as 2025-06-01T12:00:00Z (UTC unless it "
            "names an offset) or a duration ago such as 30m, 12h, 7d"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def milliseconds(moment: datetime) -> int:
    """Milliseconds since the Unix epoch, as Kafka timestamps count."""
    return int(moment.timestamp() * 1000)


def format_moment(stamp_ms: int | None) -> str:
    """A Kafka timestamp as UTC `2025-06-01T12:00:00.123Z`; `-` when there is none."""
    if stamp_ms is None:
        return "-"
    moment = datetime.fromtimestamp(stamp_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp_ms % 1000:03d}Z"


def moment_option(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """Click callback: an option's text as `parse_moment` reads it."""
    if value is None:
        return None
    try:
        return parse_moment(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None

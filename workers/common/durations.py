"""Durations as commands take them: a whole number and one unit, `90s`, `90m`, `12h`, `30d`."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Final

_DURATION: Final = re.compile(r"(?P<amount>[0-9]+)(?P<unit>[smhd])")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """`text` as a timedelta; ValueError (saying what is accepted) for anything else."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r}: use a whole number and s, m, h or d, e.g. 30d or 12h")
    try:
        return timedelta(**{_UNITS[match["unit"]]: int(match["amount"])})
    except (OverflowError, ValueError):  # beyond timedelta, or beyond int()'s digit limit
        raise ValueError(f"{text!r} is too long a duration") from None

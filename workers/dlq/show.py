"""`workers dlq show`: the newest selected DLQ messages, one block each: where the message
sits and came from, why it is there, its headers and a capped, redacted payload preview."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from typing import Final

from workers.common.moments import format_moment
from workers.dlq.letters import DeadLetter, Position
from workers.dlq.preview import DEFAULT_PREVIEW_BYTES, header_preview, preview

DEFAULT_LIMIT: Final = 10
MAX_REASON_BYTES: Final = 1024


def newest(letters: Iterable[DeadLetter], limit: int) -> list[DeadLetter]:
    """The `limit` newest of `letters` (by DLQ timestamp, then position), oldest first."""

    def order(letter: DeadLetter) -> tuple[int, int, int]:
        stamp = -1 if letter.timestamp_ms is None else letter.timestamp_ms
        return stamp, letter.position.partition, letter.position.offset

    return sorted(heapq.nlargest(limit, letters, key=order), key=order)


def show_lines(
    letter: DeadLetter,
    claims: Mapping[Position, str],
    preview_bytes: int = DEFAULT_PREVIEW_BYTES,
) -> list[str]:
    state = claims.get(letter.position)
    origin = letter.origin
    lines = [
        f"{letter.position}  {format_moment(letter.timestamp_ms)}  "
        f"worker={letter.worker or '-'}  replay: {state or 'not replayed'}",
        f"  reason:   {preview(letter.reason.encode(), MAX_REASON_BYTES)}",
        f"  original: {origin if origin is not None else 'unknown (no original_* headers)'}",
        f"  key:      {preview(letter.key, preview_bytes)}",
    ]
    headers = letter.original_headers()
    lines.append(f"  headers:  {len(headers)}" + ("" if headers else " (none)"))
    lines += [
        f"    {name}: {header_preview(name, value, preview_bytes)}" for name, value in headers
    ]
    size = len(letter.value) if letter.value is not None else 0
    lines.append(f"  value:    {size} bytes: {preview(letter.value, preview_bytes)}")
    return lines

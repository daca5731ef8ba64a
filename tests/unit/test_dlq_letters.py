"""DLQ messages as the DLQ tools read them: reason, origin, original headers, selection."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from arroyo.types import Partition, Topic

from tests.support.dead_letters import DLQ_TOPIC, INPUT_TOPIC, dead_letter
from workers.common.dlq import DLQ_HEADER_NAMES, dlq_headers
from workers.common.moments import milliseconds, parse_moment
from workers.dlq.letters import REPLAYED_FROM_HEADER, DeadLetter, Position, original_headers
from workers.dlq.selection import Selection

ORIGINAL = [("organization-id", b"42"), ("sha1", b"ab" * 20)]


def test_the_names_dlq_headers_appends_are_the_ones_the_tools_strip() -> None:
    added = dlq_headers(ORIGINAL, Partition(Topic("in"), 3), 7, "code: detail", "w")
    assert tuple(name for name, _ in added[len(ORIGINAL) :]) == DLQ_HEADER_NAMES


def test_a_dead_letter_says_why_and_where_it_came_from() -> None:
    letter = dead_letter(5, reason="missing_field: org_id", headers=ORIGINAL, original=(3, 9))
    assert letter.reason == "missing_field: org_id"
    assert letter.reason_code == "missing_field"
    assert letter.worker == "billing"
    assert letter.origin == Position(INPUT_TOPIC, 3, 9)
    assert str(letter.position) == f"{DLQ_TOPIC}:0:5"
    assert letter.original_headers() == ORIGINAL


def test_original_headers_keep_an_original_header_named_like_a_dlq_header() -> None:
    # A message that had its own `reason` header keeps it; only the last one is the DLQ's.
    letter = dead_letter(1, headers=[("reason", b"theirs"), *ORIGINAL])
    assert letter.reason == "invalid_json: payload is not valid JSON"
    assert letter.original_headers() == [("reason", b"theirs"), *ORIGINAL]


def test_a_replay_carries_the_original_headers_and_where_it_was_replayed_from() -> None:
    letter = dead_letter(12, partition=1, headers=ORIGINAL)
    assert letter.replay_headers() == [
        *ORIGINAL,
        (REPLAYED_FROM_HEADER, f"{DLQ_TOPIC}:1:12".encode()),
    ]


def test_a_replayed_message_dead_lettered_again_points_at_its_newest_origin() -> None:
    first = dead_letter(3, headers=ORIGINAL, original=(0, 10))
    again = dead_letter(8, headers=first.replay_headers(), original=(0, 55))
    assert again.origin == Position(INPUT_TOPIC, 0, 55)
    assert again.original_headers() == first.replay_headers()


def test_a_copy_without_origin_headers_has_no_origin_and_an_unspecified_reason() -> None:
    letter = DeadLetter(Position(DLQ_TOPIC, 0, 1), None, None, b"x", (("a", b"1"),))
    assert letter.origin is None
    assert letter.reason == "unspecified"
    assert letter.worker is None
    assert original_headers(letter.headers) == [("a", b"1")]


# ---- selection -----------------------------------------------------------------------------

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def at(minutes: int) -> int:
    return milliseconds(T0 + timedelta(minutes=minutes))


def test_a_selection_takes_the_workers_messages_and_those_without_a_worker_header() -> None:
    selection = Selection("billing", DLQ_TOPIC)
    assert selection.matches(dead_letter(1, worker="billing"))
    assert selection.matches(dead_letter(2, worker=None))
    assert not selection.matches(dead_letter(3, worker="blob-ingest"))


def test_a_selection_by_reason_matches_the_code_or_the_whole_reason() -> None:
    letter = dead_letter(1, reason="unknown_organization: organization 7 does not exist")
    assert Selection("billing", DLQ_TOPIC, reason="unknown_organization").matches(letter)
    assert Selection("billing", DLQ_TOPIC, reason=letter.reason).matches(letter)
    assert not Selection("billing", DLQ_TOPIC, reason="unknown").matches(letter)
    assert not Selection("billing", DLQ_TOPIC, reason="invalid_json").matches(letter)


def test_a_selection_by_time_includes_since_and_excludes_until() -> None:
    selection = Selection("billing", DLQ_TOPIC, since=T0, until=T0 + timedelta(minutes=10))
    assert [
        minutes
        for minutes in (-1, 0, 5, 10, 11)
        if selection.matches(dead_letter(minutes + 1, timestamp_ms=at(minutes)))
    ] == [0, 5]
    assert not selection.matches(dead_letter(99, timestamp_ms=None))
    assert selection.since_ms == at(0)
    assert selection.describe() == {
        "dlq_topic": DLQ_TOPIC,
        "reason": None,
        "since": "2025-06-01T12:00:00+00:00",
        "until": "2025-06-01T12:10:00+00:00",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-06-01T12:00:00Z", T0),
        ("2025-06-01T12:00:00", T0),
        ("2025-06-01T14:00:00+02:00", T0),
        ("2025-06-01", T0 - timedelta(hours=12)),
        ("2h", T0 - timedelta(hours=2)),
        ("30m", T0 - timedelta(minutes=30)),
    ],
)
def test_a_moment_is_an_iso_time_utc_by_default_or_a_duration_ago(
    text: str, expected: datetime
) -> None:
    assert parse_moment(text, now=lambda: T0) == expected


def test_a_moment_that_is_neither_says_what_is_accepted() -> None:
    with pytest.raises(ValueError, match=r"ISO 8601 time .* or a duration ago"):
        parse_moment("yesterday")

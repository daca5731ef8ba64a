"""The replay's PostgreSQL side: audit rows (`dlq_replays`) and one claim per replayed DLQ
message (`dlq_replayed_messages`, migration 0007).

A message is claimed, and the claim committed, before it is produced; the primary key
(dlq topic, partition, offset) lets exactly one run claim it. A run holds the advisory lock
(`REPLAY_LOCK_CLASS`, its id) on its connection while it works, so a `running` row whose lock
is free belongs to a process that died: the next run marks it `interrupted`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import psycopg
from psycopg.types.json import Jsonb

from workers.dlq.letters import DeadLetter, Position
from workers.dlq.selection import Selection

# An arbitrary constant naming "DLQ replays" among the two-key advisory locks.
REPLAY_LOCK_CLASS: Final = 73_051_180


@dataclass
class ReplayCounts:
    selected: int = 0
    already_replayed: int = 0
    unreplayable: int = 0
    replayed: int = 0
    failed: int = 0
    # --retry-unconfirmed: unconfirmed claims whose replay was found in the original topic.
    found_replayed: int = 0


def start_replay(connection: psycopg.Connection, selection: Selection, requested_by: str) -> int:
    """Insert the run's audit row (`running`) and take its lock; the run's id."""
    with connection.transaction():
        row = connection.execute(
            "INSERT INTO dlq_replays (worker, dlq_topic, selection, requested_by, state) "
            "VALUES (%s, %s, %s, %s, 'running') RETURNING id",
            (selection.worker, selection.dlq_topic, Jsonb(selection.describe()), requested_by),
        ).fetchone()
    assert row is not None
    replay_id = int(row[0])
    connection.execute("SELECT pg_advisory_lock(%s, %s)", (REPLAY_LOCK_CLASS, replay_id))
    return replay_id


def mark_interrupted(connection: psycopg.Connection, dlq_topic: str) -> list[int]:
    """Mark `interrupted` every `running` run of `dlq_topic` whose process is gone; their ids."""
    running = connection.execute(
        "SELECT id FROM dlq_replays WHERE dlq_topic = %s AND state = 'running' ORDER BY id",
        (dlq_topic,),
    ).fetchall()
    interrupted: list[int] = []
    for (replay_id,) in running:
        free = connection.execute(
            "SELECT pg_try_advisory_lock(%s, %s)", (REPLAY_LOCK_CLASS, replay_id)
        ).fetchone()
        if not (free and free[0]):
            continue  # still running
        try:
            connection.execute(
                "UPDATE dlq_replays SET state = 'interrupted', finished_at = now() "
                "WHERE id = %s AND state = 'running'",
                (replay_id,),
            )
            interrupted.append(int(replay_id))
        finally:
            connection.execute("SELECT pg_advisory_unlock(%s, %s)", (REPLAY_LOCK_CLASS, replay_id))
    return interrupted


def claim(
    connection: psycopg.Connection, replay_id: int, letters: Sequence[DeadLetter]
) -> set[Position]:
    """Claim `letters` (each must have an origin) for run `replay_id`, committed on return;
    the positions this run claimed (those claimed before by any run are left out)."""
    if not letters:
        return set()
    origins = [letter.origin for letter in letters]
    assert all(origin is not None for origin in origins)
    with connection.transaction():
        rows = connection.execute(
            "INSERT INTO dlq_replayed_messages (dlq_topic, dlq_partition, dlq_offset, "
            "replay_id, original_topic, original_partition, original_offset, state) "
            "SELECT t, p, o, %s, ot, op, oo, 'claimed' FROM unnest("
            "%s::text[], %s::int[], %s::bigint[], %s::text[], %s::int[], %s::bigint[]"
            ") AS c(t, p, o, ot, op, oo) "
            "ON CONFLICT (dlq_topic, dlq_partition, dlq_offset) DO NOTHING "
            "RETURNING dlq_topic, dlq_partition, dlq_offset",
            (
                replay_id,
                [letter.position.topic for letter in letters],
                [letter.position.partition for letter in letters],
                [letter.position.offset for letter in letters],
                [origin.topic for origin in origins if origin is not None],
                [origin.partition for origin in origins if origin is not None],
                [origin.offset for origin in origins if origin is not None],
            ),
        ).fetchall()
    return {Position(str(topic), int(p), int(o)) for topic, p, o in rows}


def record_results(
    connection: psycopg.Connection,
    replay_id: int,
    produced: Mapping[Position, int],
    failed: Mapping[Position, str],
    counts: ReplayCounts,
) -> None:
    """What Kafka answered for this run's claims, with the run's counts so far, in one
    transaction."""
    with connection.transaction():
        for states, values in (("produced", produced), ("failed", failed)):
            if not values:
                continue
            positions = list(values)
            connection.execute(
                "UPDATE dlq_replayed_messages m SET state = %s, finished_at = now(), "
                "produced_offset = CASE WHEN %s = 'produced' THEN r.v::bigint END, "
                "error = CASE WHEN %s = 'failed' THEN r.v END "
                "FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::text[]) "
                "AS r(t, p, o, v) "
                "WHERE m.dlq_topic = r.t AND m.dlq_partition = r.p AND m.dlq_offset = r.o "
                "AND m.replay_id = %s",
                (
                    states,
                    states,
                    states,
                    [position.topic for position in positions],
                    [position.partition for position in positions],
                    [position.offset for position in positions],
                    [str(values[position]) for position in positions],
                    replay_id,
                ),
            )
        _update_counts(connection, replay_id, counts)


def finish_replay(
    connection: psycopg.Connection, replay_id: int, state: str, counts: ReplayCounts
) -> None:
    with connection.transaction():
        _update_counts(connection, replay_id, counts)
        connection.execute(
            "UPDATE dlq_replays SET state = %s, finished_at = now() WHERE id = %s",
            (state, replay_id),
        )
    connection.execute("SELECT pg_advisory_unlock(%s, %s)", (REPLAY_LOCK_CLASS, replay_id))


def _update_counts(connection: psycopg.Connection, replay_id: int, counts: ReplayCounts) -> None:
    connection.execute(
        "UPDATE dlq_replays SET selected = %s, already_replayed = %s, unreplayable = %s, "
        "replayed = %s, failed = %s WHERE id = %s",
        (
            counts.selected,
            counts.already_replayed,
            counts.unreplayable,
            counts.replayed,
            counts.failed,
            replay_id,
        ),
    )


def claimed_positions(connection: psycopg.Connection, dlq_topic: str) -> dict[Position, str]:
    """Every claimed message of `dlq_topic` with its state (`claimed`, `produced`, `failed`)."""
    rows = connection.execute(
        "SELECT dlq_partition, dlq_offset, state FROM dlq_replayed_messages WHERE dlq_topic = %s",
        (dlq_topic,),
    ).fetchall()
    return {Position(dlq_topic, int(p), int(o)): str(state) for p, o, state in rows}


# A claim is unconfirmed when Kafka refused its message (`failed`), or when the run that
# claimed it is no longer running and never recorded an answer (`claimed`).
_UNCONFIRMED = (
    "(m.state = 'failed' OR (m.state = 'claimed' AND m.replay_id IN "
    "(SELECT id FROM dlq_replays WHERE state <> 'running')))"
)


@dataclass(frozen=True)
class Unconfirmed:
    position: Position
    origin: Position
    claimed_at_ms: int


def unconfirmed_claims(connection: psycopg.Connection, dlq_topic: str) -> list[Unconfirmed]:
    rows = connection.execute(
        "SELECT m.dlq_partition, m.dlq_offset, m.original_topic, m.original_partition, "
        "m.original_offset, (extract(epoch FROM m.claimed_at) * 1000)::bigint "
        f"FROM dlq_replayed_messages m WHERE m.dlq_topic = %s AND {_UNCONFIRMED} "
        "ORDER BY m.dlq_partition, m.dlq_offset",
        (dlq_topic,),
    ).fetchall()
    return [
        Unconfirmed(
            Position(dlq_topic, int(p), int(o)), Position(str(t), int(op), int(oo)), int(at)
        )
        for p, o, t, op, oo, at in rows
    ]


def confirm(connection: psycopg.Connection, found: Mapping[Position, int]) -> int:
    """Record unconfirmed claims as `produced` at the offsets their replay was found at."""
    confirmed = 0
    with connection.transaction():
        for position, offset in found.items():
            confirmed += connection.execute(
                "UPDATE dlq_replayed_messages m SET state = 'produced', produced_offset = %s, "
                "error = NULL, finished_at = now() WHERE m.dlq_topic = %s "
                f"AND m.dlq_partition = %s AND m.dlq_offset = %s AND {_UNCONFIRMED}",
                (offset, position.topic, position.partition, position.offset),
            ).rowcount
    return confirmed


def reclaim(
    connection: psycopg.Connection, replay_id: int, positions: Sequence[Position]
) -> set[Position]:
    """Claim again for run `replay_id` those of `positions` that are still unconfirmed (one
    run wins each), committed on return; the positions it got."""
    if not positions:
        return set()
    with connection.transaction():
        rows = connection.execute(
            "UPDATE dlq_replayed_messages m SET replay_id = %s, state = 'claimed', "
            "error = NULL, claimed_at = now(), finished_at = NULL "
            "FROM unnest(%s::text[], %s::int[], %s::bigint[]) AS r(t, p, o) "
            "WHERE m.dlq_topic = r.t AND m.dlq_partition = r.p AND m.dlq_offset = r.o "
            f"AND {_UNCONFIRMED} RETURNING m.dlq_topic, m.dlq_partition, m.dlq_offset",
            (
                replay_id,
                [position.topic for position in positions],
                [position.partition for position in positions],
                [position.offset for position in positions],
            ),
        ).fetchall()
    return {Position(str(topic), int(p), int(o)) for topic, p, o in rows}

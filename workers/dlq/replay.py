"""`workers dlq replay`: selected DLQ messages back to their original topic, each at most once
(docs/operations.md, DLQ inspection and replay).

Per batch of selected messages:

1. claim them in PostgreSQL and commit (`claims.claim`): a message another run claimed is
   left out, so two runs, or one run twice, never produce the same DLQ message;
2. produce the claimed ones with an idempotent producer to the original topic and
   partition, with the original key, value and headers plus `dlq_replayed_from`, and flush;
3. record what Kafka answered (`produced` with its offset, or `failed` with the error).

A crash between 1 and 3 leaves claims without an answer; a run never produces them again,
so the worst a crash does is leave a message not replayed (its claim says `claimed`, its run
`interrupted`), never replay it twice. `--retry-unconfirmed` finishes them, and the messages
Kafka refused, after looking for them in the original topic (`workers.dlq.unconfirmed`).
Only dead-lettered messages are replayed: billing's outcomes of a message it billed are never
in its DLQ, so a replay cannot bill twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

import psycopg
from confluent_kafka import KafkaError, Message, Producer

from workers.common.kafka_config import producer_configuration
from workers.common.settings import Settings
from workers.dlq.claims import (
    ReplayCounts,
    claim,
    claimed_positions,
    confirm,
    finish_replay,
    mark_interrupted,
    reclaim,
    record_results,
    start_replay,
    unconfirmed_claims,
)
from workers.dlq.letters import DeadLetter, Position
from workers.dlq.reading import read_dead_letters
from workers.dlq.selection import Selection
from workers.dlq.unconfirmed import find_replays

logger = logging.getLogger(__name__)

MAX_BATCH_MESSAGES: Final = 500
MAX_BATCH_BYTES: Final = 64 * 1024 * 1024
# Every message gets its delivery report within this (librdkafka `message.timeout.ms`).
DELIVERY_TIMEOUT_MS: Final = 60_000
FLUSH_TIMEOUT_SECONDS: Final = DELIVERY_TIMEOUT_MS / 1000 + 30

Verdict = str  # "replay", "retry", "unreplayable", or "already <claim state>"


def batches(
    letters: Iterable[DeadLetter],
    max_messages: int = MAX_BATCH_MESSAGES,
    max_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[list[DeadLetter]]:
    """`letters` in order, in lists of at most `max_messages` and about `max_bytes` (a single
    larger message is a batch of its own)."""
    batch: list[DeadLetter] = []
    size = 0
    for letter in letters:
        weight = len(letter.value or b"") + len(letter.key or b"")
        if batch and (len(batch) >= max_messages or size + weight > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(letter)
        size += weight
    if batch:
        yield batch


def verdict(
    letter: DeadLetter, claims: dict[Position, str], retried: frozenset[Position] = frozenset()
) -> Verdict:
    if letter.position in retried:
        return "retry"
    state = claims.get(letter.position)
    if state is not None:
        return f"already {state}"
    return "replay" if letter.origin is not None else "unreplayable"


def selected_letters(settings: Settings, selection: Selection) -> Iterator[DeadLetter]:
    for letter in read_dead_letters(settings, selection.dlq_topic, selection.since_ms):
        if selection.matches(letter):
            yield letter


def _unconfirmed(
    settings: Settings, connection: psycopg.Connection, dlq_topic: str
) -> tuple[dict[Position, int], frozenset[Position]]:
    """Unconfirmed claims of `dlq_topic`: those whose replay is in the original topic (with
    its offset), and those to produce again."""
    pending = unconfirmed_claims(connection, dlq_topic)
    found = find_replays(settings, pending)
    return found, frozenset(claim.position for claim in pending if claim.position not in found)


def plan_replay(
    settings: Settings,
    connection: psycopg.Connection,
    selection: Selection,
    retry_unconfirmed: bool = False,
) -> Iterator[tuple[DeadLetter, Verdict]]:
    """What a replay of `selection` would do with each selected message; writes nothing."""
    claims = claimed_positions(connection, selection.dlq_topic)
    retried: frozenset[Position] = frozenset()
    if retry_unconfirmed:
        found, retried = _unconfirmed(settings, connection, selection.dlq_topic)
        claims.update(dict.fromkeys(found, "produced (found in the original topic)"))
    for letter in selected_letters(settings, selection):
        yield letter, verdict(letter, claims, retried)


@dataclass
class ReplayReport:
    replay_id: int
    counts: ReplayCounts
    interrupted: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class _Deliveries:
    produced: dict[Position, int] = field(default_factory=dict)
    failed: dict[Position, str] = field(default_factory=dict)

    def callback(self, position: Position) -> Callable[[KafkaError | None, Message], None]:
        def delivered(error: KafkaError | None, message: Message) -> None:
            if error is None:
                self.produced[position] = message.offset() or 0
            else:
                self.failed[position] = error.str()

        return delivered


def _produce(producer: Producer, letters: list[DeadLetter], claimed: set[Position]) -> _Deliveries:
    deliveries = _Deliveries()
    for letter in letters:
        origin = letter.origin
        if letter.position not in claimed or origin is None:
            continue
        headers: list[tuple[str, str | bytes | None]] = [*letter.replay_headers()]
        while True:
            try:
                producer.produce(
                    origin.topic,
                    value=letter.value,
                    key=letter.key,
                    partition=origin.partition,
                    headers=headers,
                    on_delivery=deliveries.callback(letter.position),
                )
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(FLUSH_TIMEOUT_SECONDS)
    if remaining:
        # Cannot happen past message.timeout.ms; what is left stays claimed and unconfirmed,
        # as after a crash.
        logger.error("replayed messages without a delivery report", extra={"count": remaining})
    return deliveries


def replay(
    settings: Settings,
    connection: psycopg.Connection,
    selection: Selection,
    requested_by: str,
    on_progress: Callable[[ReplayCounts], None] | None = None,
    retry_unconfirmed: bool = False,
) -> ReplayReport:
    """Replay `selection` once; `connection` is autocommit and holds the run's lock."""
    interrupted = mark_interrupted(connection, selection.dlq_topic)
    replay_id = start_replay(connection, selection, requested_by)
    report = ReplayReport(replay_id, ReplayCounts(), interrupted)
    counts = report.counts
    producer = Producer(
        producer_configuration(
            settings, "workers-dlq-replay", {"message.timeout.ms": DELIVERY_TIMEOUT_MS}
        )
    )
    state = "failed"
    try:
        retried: frozenset[Position] = frozenset()
        if retry_unconfirmed:
            found, retried = _unconfirmed(settings, connection, selection.dlq_topic)
            counts.found_replayed = confirm(connection, found)
        for batch in batches(selected_letters(settings, selection)):
            counts.selected += len(batch)
            replayable = [letter for letter in batch if letter.origin is not None]
            counts.unreplayable += len(batch) - len(replayable)
            claimed = claim(connection, replay_id, replayable)
            claimed |= reclaim(
                connection, replay_id, [r.position for r in replayable if r.position in retried]
            )
            counts.already_replayed += len(replayable) - len(claimed)
            deliveries = _produce(producer, replayable, claimed)
            counts.replayed += len(deliveries.produced)
            counts.failed += len(deliveries.failed)
            for error in deliveries.failed.values():
                report.errors[error] = report.errors.get(error, 0) + 1
            record_results(connection, replay_id, deliveries.produced, deliveries.failed, counts)
            if on_progress is not None:
                on_progress(counts)
        state = "done"
    finally:
        producer.flush(FLUSH_TIMEOUT_SECONDS)
        finish_replay(connection, replay_id, state, counts)
    logger.info(
        "DLQ replay finished",
        extra={"replay_id": replay_id, "worker": selection.worker, "replayed": counts.replayed},
    )
    return report

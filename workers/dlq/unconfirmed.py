"""Finishing what a replay left unconfirmed (`workers dlq replay --retry-unconfirmed`).

A claim is unconfirmed when Kafka refused its message, or when its run died before recording
Kafka's answer: the message may or may not be in the original topic. Before such a message is
produced again, the original topic is read from a little before the claim: a message there
whose last `dlq_replayed_from` header names the DLQ message is its replay, and the claim is
recorded as `produced` at that offset instead. Only what is not found is claimed again (one
run wins each) and produced. The one window left: a produce request of a run that died
mid-flight, that the broker appends after this read (milliseconds after the death).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from workers.common.settings import Settings
from workers.dlq.claims import Unconfirmed
from workers.dlq.letters import REPLAYED_FROM_HEADER, Position
from workers.dlq.reading import TopicNotFound, read_dead_letters

# How far before a claim the original topic is read: the claim's time is PostgreSQL's clock,
# a message's timestamp the producer's.
CLOCK_MARGIN_MS: Final = 5 * 60 * 1000


def find_replays(settings: Settings, claims: Sequence[Unconfirmed]) -> dict[Position, int]:
    """For each of `claims` whose replay is in its original partition, that offset."""
    wanted = {str(claim.position): claim for claim in claims}
    since: dict[str, int] = {}
    for claim in claims:
        start = claim.claimed_at_ms - CLOCK_MARGIN_MS
        since[claim.origin.topic] = min(since.get(claim.origin.topic, start), start)
    found: dict[Position, int] = {}
    for topic, start in sorted(since.items()):
        try:
            # The original topic is read with the DLQ reader: any topic reads the same way.
            for message in read_dead_letters(settings, topic, max(start, 0)):
                sources = [v for k, v in message.headers if k == REPLAYED_FROM_HEADER and v]
                source = wanted.get(sources[-1].decode("utf-8", "replace")) if sources else None
                if source is not None and source.origin.partition == message.position.partition:
                    found[source.position] = message.position.offset
        except TopicNotFound:
            continue  # nothing was ever produced to it
    return found

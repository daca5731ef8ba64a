"""Waking librdkafka's fetchers after partitions resume (docs/rebalancing.md, Kept
partitions).

librdkafka resumes a partition by clearing a flag; the thread that fetches from the
partition's leader notices on its next pass. When every partition that thread fetches was
paused, nothing wakes it but its own timer, and it sleeps up to a second. Under the consumer
group protocol librdkafka pauses every assigned partition while the application serves a
rebalance callback, so after each rebalance the partitions a member kept fetched nothing for
up to a second (measured: kept partitions paused 0.5-1.0 s on a join, where the steady floor
is one transaction interval). Arroyo's resume after backpressure meets the same sleep.

Any request to a broker wakes its thread. So after a rebalance or a resume the consumer asks
the partitions' leaders for their latest offsets: one request per leader, sent at once,
answered or not within `WAKE_TIMEOUT_SECONDS`; the answer is not used.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Final

from arroyo.types import Partition
from confluent_kafka import KafkaException, TopicPartition

logger = logging.getLogger(__name__)

#: How long the consumer thread waits for the leaders' answers. The request has woken the
#: fetchers once it is sent; waiting for more only costs the consumer thread.
WAKE_TIMEOUT_SECONDS: Final = 0.1
#: `offsets_for_times` with this timestamp asks for each partition's end offset.
_LATEST: Final = -1


def wake_fetchers(confluent: Any, partitions: Iterable[Partition]) -> None:
    """Send one request to the leader of each of `partitions` (librdkafka's consumer)."""
    request = [TopicPartition(p.topic.name, p.index, _LATEST) for p in partitions]
    if not request:
        return
    try:
        confluent.offsets_for_times(request, WAKE_TIMEOUT_SECONDS)
    except KafkaException as error:
        # A slow or missing answer: the request went out, and that is all it was for.
        logger.debug("fetcher wake-up unanswered", extra={"error": str(error)})

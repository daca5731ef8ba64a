"""Invalid messages of a run: copied to the worker's DLQ topic with the fleet's DLQ headers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from workers.billing.batch import DeadLetter
from workers.billing.outcome_producer import OutcomeProducer
from workers.common.dlq import dlq_headers, log_skipped_dead_letter

logger = logging.getLogger(__name__)


def skip_dead_letter(letter: DeadLetter) -> None:
    """No DLQ topic: the message is skipped, logged by position and reason (never its bytes)."""
    log_skipped_dead_letter(letter.partition, letter.message.offset(), letter.reason)


def produce_dead_letter(
    producer: OutcomeProducer,
    dlq_topic: str,
    letter: DeadLetter,
    worker: str,
    on_delivery: Callable[[Any, Any], None],
) -> None:
    """Hand the DLQ copy of `letter` to `producer` (raises `BufferError` when its queue is full)."""
    message = letter.message
    offset = message.offset()
    assert offset is not None
    producer.produce(
        dlq_topic,
        message.value(),
        message.key(),
        headers=dlq_headers(
            message.headers() or (), letter.partition, offset, letter.reason, worker
        ),
        on_delivery=on_delivery,
    )


def log_dead_letter(letter: DeadLetter, dlq_topic: str) -> None:
    logger.warning(
        "message sent to DLQ",
        extra={
            "dlq_topic": dlq_topic,
            "partition": letter.partition.index,
            "offset": letter.message.offset(),
            "reason": letter.reason,
        },
    )

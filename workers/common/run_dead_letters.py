"""Dead letters of a chain fed in runs (docs/operations.md, DLQ limits): Arroyo's DLQ policy
works per message it polled, and a run is one, so `UnrollRuns` hands each `InvalidPayload`
its chain raises to `RunDeadLetters` instead.

- Each invalid message is first counted against the DLQ limits (`DlqLimiter`; beyond one,
  `DlqLimitExceeded` goes up and nothing of it is produced), then copied to the DLQ topic
  with the fleet's DLQ headers (`dlq.py`), counted and logged by reason code.
- Offsets wait for their dead letters: `gate(commit)` is the commit the chain is given, and
  before it commits a partition's offset it waits until every dead letter of that partition
  below the offset is acknowledged by Kafka (producer `acks=all`). So a crash never commits
  past a message that is neither processed nor in the DLQ.
- A dead letter Kafka refuses for good (librdkafka retries inside `message.timeout.ms`), or
  does not acknowledge within `delivery_timeout_seconds`, raises `DeadLetterDeliveryError`
  from the next `poll` or commit: the worker stops without committing past it and its
  successor reads the message again.
- Without a DLQ topic (`--no-dlq`), an invalid message is logged by position and reason and
  skipped, as Arroyo does without a DLQ policy.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

from arroyo.dlq import InvalidMessage
from arroyo.types import Commit, Partition
from confluent_kafka import KafkaError, Producer

from workers.common.dlq import (
    InvalidPayload,
    dlq_headers,
    log_skipped_dead_letter,
    note_dead_letter,
)
from workers.common.dlq_limit import DlqLimiter
from workers.common.metrics import FleetMetrics

#: How long a commit, a full producer queue or the shutdown waits for dead letters. librdkafka
#: retries a delivery for up to `message.timeout.ms` (5 minutes); the consumer thread must
#: not block that long, so the worker stops after this instead.
DEFAULT_DELIVERY_TIMEOUT_SECONDS: Final = 30.0
#: Pause between producer polls while the producer's queue is full.
QUEUE_FULL_PAUSE_SECONDS: Final = 0.1


class DeadLetterDeliveryError(RuntimeError):
    """A dead letter was not acknowledged: the worker stops before committing past it."""


class RunDeadLetters:
    def __init__(
        self,
        producer: Producer | None,
        dlq_topic: str | None,
        worker: str,
        metrics: FleetMetrics,
        limiter: DlqLimiter | None = None,
        delivery_timeout_seconds: float = DEFAULT_DELIVERY_TIMEOUT_SECONDS,
    ) -> None:
        if (producer is None) != (dlq_topic is None):
            raise ValueError("a DLQ topic needs a producer, and a producer a DLQ topic")
        self.__producer = producer
        self.__topic = dlq_topic
        self.__worker = worker
        self.__metrics = metrics
        self.__limiter = limiter
        self.__timeout = delivery_timeout_seconds
        # Per partition, the offsets whose DLQ copy Kafka has not acknowledged yet (ascending:
        # one consumer thread produces them in offset order).
        self.__undelivered: dict[Partition, deque[int]] = {}
        self.__failure: str | None = None

    def reset(self, assignment: Mapping[Partition, int]) -> None:
        """A new assignment: the DLQ limits count afresh from its offsets."""
        if self.__limiter is not None:
            self.__limiter.reset(assignment)

    def dead_letter(self, invalid: InvalidMessage) -> None:
        if not isinstance(invalid, InvalidPayload):
            # Only a payload-carrying error can be copied; anything else is a bug in the chain.
            raise TypeError(f"{type(invalid).__name__} carries no payload to dead-letter")
        partition, offset = invalid.partition, invalid.offset
        reason = invalid.reason or "unspecified"
        if self.__limiter is not None:
            self.__limiter.record(partition, offset, reason)
        producer, topic = self.__producer, self.__topic
        if producer is None or topic is None:
            log_skipped_dead_letter(partition, offset, reason)
            return
        payload = invalid.payload
        headers: list[tuple[str, str | bytes | None]] = [
            *dlq_headers(payload.headers, partition, offset, reason, self.__worker)
        ]
        pending = self.__undelivered.setdefault(partition, deque())
        pending.append(offset)

        def delivered(error: KafkaError | None, _message: Any) -> None:
            if error is not None:
                self.__failure = self.__failure or (
                    f"DLQ copy of {partition.topic.name}[{partition.index}] offset {offset}: "
                    f"{error.str()}"
                )
                return
            pending.remove(offset)

        deadline = time.monotonic() + self.__timeout
        while True:
            try:
                producer.produce(
                    topic, payload.value, payload.key, headers=headers, on_delivery=delivered
                )
                break
            except BufferError:
                if time.monotonic() >= deadline:
                    pending.pop()
                    raise DeadLetterDeliveryError(
                        f"DLQ producer queue full for {self.__timeout:g} s"
                    ) from None
                producer.poll(QUEUE_FULL_PAUSE_SECONDS)
        note_dead_letter(self.__metrics, topic, partition, offset, reason)

    def poll(self) -> None:
        """Serve delivery reports; raise a delivery that failed."""
        if self.__producer is not None and self.__producing():
            self.__producer.poll(0)
        self.__raise_failure()

    def gate(self, commit: Commit) -> Commit:
        """`commit`, after the dead letters below the offsets it commits are acknowledged."""

        def gated(offsets: Mapping[Partition, int], force: bool = False) -> None:
            self.wait_for(offsets)
            commit(offsets, force)

        return gated

    def wait_for(self, offsets: Mapping[Partition, int]) -> None:
        producer = self.__producer
        deadline = time.monotonic() + self.__timeout
        for partition, next_offset in offsets.items():
            pending = self.__undelivered.get(partition)
            while pending and pending[0] < next_offset:
                assert producer is not None
                self.__raise_failure()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeadLetterDeliveryError(
                        f"DLQ copy of {partition.topic.name}[{partition.index}] offset "
                        f"{pending[0]} not acknowledged within {self.__timeout:g} s"
                    )
                producer.poll(min(left, 0.1))
        self.__raise_failure()

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every dead letter produced so far (shutdown)."""
        if self.__producer is not None and self.__producing():
            self.__producer.flush(self.__timeout if timeout is None else timeout)
        self.__raise_failure()
        left = sum(len(pending) for pending in self.__undelivered.values())
        if left:
            raise DeadLetterDeliveryError(f"{left} DLQ copies not acknowledged at shutdown")

    def __producing(self) -> bool:
        return any(self.__undelivered.values())

    def __raise_failure(self) -> None:
        if self.__failure is not None:
            raise DeadLetterDeliveryError(self.__failure)

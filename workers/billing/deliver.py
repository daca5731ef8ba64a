"""`DeliverOutcomes`: produce each batch, wait for its flag work, release its offsets in order."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, NoReturn

from arroyo.processing.strategies.abstract import (
    MessageRejected,
    ProcessingStrategy,
)
from arroyo.types import (
    FILTERED_PAYLOAD,
    Message,
    Partition,
    Topic,
    Value,
)
from confluent_kafka import KafkaError

from workers.billing.batch import DeadLetter, OutcomeBatch, remaining
from workers.billing.dead_letters import log_dead_letter, produce_dead_letter, skip_dead_letter
from workers.billing.flags import FlagJob, FlagWriter
from workers.billing.metrics import BillingMetrics
from workers.billing.outcome_producer import OutcomeDeliveryError, OutcomeProducer, is_retriable
from workers.billing.tally import BillingTally
from workers.common.backoff import Backoff
from workers.common.dlq import reason_code

logger = logging.getLogger(__name__)

#: Outcomes handed to the producer and not yet acknowledged before the chain pushes back.
DEFAULT_MAX_PENDING_OUTCOMES: Final = 50_000
#: Batches whose outcomes or flag work are not done before the chain pushes back.
DEFAULT_MAX_PENDING_BATCHES: Final = 1_000

_JOIN_POLL_SECONDS: Final = 0.005
_CHECK_INTERVAL_SECONDS: Final = 0.005


class _InFlight:
    """One batch between `produce_batch` and the release of its offsets."""

    __slots__ = (
        "by_category",
        "failures",
        "job",
        "letter_retries",
        "pending_partitions",
        "remaining",
        "retries",
        "sent_at",
        "size",
        "unsent",
    )

    def __init__(
        self,
        batch: OutcomeBatch,
        job: FlagJob | None,
        retries: list[tuple[_InFlight, bytes, str]],
        letter_retries: list[tuple[_InFlight, DeadLetter, str]],
        failures: list[KafkaError],
    ) -> None:
        self.size = len(batch.payloads)
        self.remaining = self.size + len(batch.dead_letters)
        self.by_category = batch.by_category
        self.job = job
        self.unsent: list[dict[str, Any]] = []
        self.retries = retries
        self.letter_retries = letter_retries
        self.failures = failures
        self.pending_partitions = 0
        self.sent_at = time.monotonic()

    def delivered(self, error: KafkaError | None, message: Any) -> None:
        """librdkafka's delivery report for one outcome (called from `producer.poll`)."""
        if error is None:
            self.remaining -= 1
        elif is_retriable(error):
            self.retries.append((self, message.value(), error.name()))
        else:
            self.failures.append(error)

    def dead_letter_delivered(self, letter: DeadLetter, error: KafkaError | None) -> None:
        """The delivery report for one DLQ copy (called from `producer.poll`)."""
        if error is None:
            self.remaining -= 1
        elif is_retriable(error):
            self.letter_retries.append((self, letter, error.name()))
        else:
            self.failures.append(error)

    @property
    def done(self) -> bool:
        job = self.job
        return not self.remaining and not self.unsent and (job is None or job.done)


class DeliverOutcomes(ProcessingStrategy[OutcomeBatch]):
    """Produces each batch's outcomes, starts its flag job and releases completed offsets.

    A batch's dead letters (invalid messages of runs) are copied to `dlq_topic` with the
    fleet's DLQ headers through the same producer, and count as part of the batch: its
    offsets are released only after Kafka acknowledged them too. Without a `dlq_topic` they
    are logged (never their bytes) and skipped.
    """

    def __init__(
        self,
        producer: OutcomeProducer,
        topic: Topic,
        next_step: ProcessingStrategy[Any],
        tally: BillingTally,
        *,
        flag_writer: FlagWriter | None = None,
        max_pending_outcomes: int = DEFAULT_MAX_PENDING_OUTCOMES,
        max_pending_batches: int = DEFAULT_MAX_PENDING_BATCHES,
        backoff: Backoff | None = None,
        dlq_topic: str | None = None,
        worker: str = "billing",
        on_dead_letter: Callable[[str], None] | None = None,
    ) -> None:
        self.__producer = producer
        self.__topic = topic.name
        self.__dlq_topic = dlq_topic
        self.__worker = worker
        self.__on_dead_letter = on_dead_letter
        self.__letter_retries: list[tuple[_InFlight, DeadLetter, str]] = []
        self.__next_step = next_step
        self.__tally = tally
        self.__metrics: BillingMetrics = tally.billing
        self.__flag_writer = flag_writer
        self.__max_pending_outcomes = max_pending_outcomes
        self.__max_pending_batches = max_pending_batches
        self.__backoff = backoff if backoff is not None else Backoff(0.05, 5.0)
        self.__queues: dict[Partition, deque[tuple[_InFlight, int]]] = {}
        self.__in_flight: list[_InFlight] = []  # not yet accounted (metrics)
        self.__retries: list[tuple[_InFlight, bytes, str]] = []
        self.__failures: list[KafkaError] = []
        self.__unsent: list[_InFlight] = []
        self.__retry_at = 0.0
        # Outcomes of batches not released yet (queued, in flight, waiting for a retry).
        self.__outstanding = 0
        self.__next_check = 0.0
        self.__next_commit_poll = 0.0
        self.__closed = False

    # -- submit -----------------------------------------------------------------------------

    def submit(self, message: Message[OutcomeBatch]) -> None:
        assert not self.__closed
        batch = message.payload
        if self.__in_flight and self.__over_budget(batch):
            self.__producer.poll(0)
            self.__progress()
            if self.__in_flight and self.__over_budget(batch):
                raise MessageRejected()
        committable = message.committable
        job = None
        if batch.candidates and self.__flag_writer is not None:
            job = self.__flag_writer.submit(batch.candidates)
            self.__tally.flag_submitted += len(batch.candidates)
        tracker = _InFlight(batch, job, self.__retries, self.__letter_retries, self.__failures)
        if batch.payloads:
            self.__outstanding += len(batch.payloads)
            self.__send(tracker, batch.payloads)
            self.__tally.produced += len(batch.payloads)
        if batch.dead_letters:
            self.__send_dead_letters(tracker, batch.dead_letters)
        self.__in_flight.append(tracker)
        queues = self.__queues
        for partition, offset in committable.items():
            queue = queues.get(partition)
            if queue is None:
                queue = queues[partition] = deque()
            queue.append((tracker, offset))
            tracker.pending_partitions += 1

    def __over_budget(self, batch: OutcomeBatch) -> bool:
        return (
            self.__outstanding + len(batch.payloads) > self.__max_pending_outcomes
            or len(self.__in_flight) >= self.__max_pending_batches
        )

    def __send(self, tracker: _InFlight, payloads: list[dict[str, Any]]) -> None:
        try:
            queued = self.__producer.produce_batch(
                self.__topic, payloads, on_delivery=tracker.delivered
            )
        except BufferError:
            # Older clients raise instead of marking the refused messages; without marks,
            # none of them was queued.
            queued = -1
            if not any("_error" in item for item in payloads):
                for item in payloads:
                    item["_error"] = KafkaError(KafkaError._QUEUE_FULL)
        if queued == len(payloads):
            return
        # Not queued (the producer's queue is full, or the topic is known not to exist):
        # kept on the batch and produced again from `poll()` after a backoff.
        for item in payloads:
            error = item.pop("_error", None)
            if error is None:
                continue
            if isinstance(error, KafkaError) and not is_retriable(error):
                self.__failures.append(error)
                continue
            tracker.unsent.append(item)
            self.__metrics.produce_retry(
                error.name() if isinstance(error, KafkaError) else "unknown"
            )
        if tracker.unsent:
            self.__unsent.append(tracker)
            self.__retry_at = time.monotonic() + self.__backoff.next_delay()

    def __send_dead_letters(self, tracker: _InFlight, letters: list[DeadLetter]) -> None:
        for letter in letters:
            if self.__dlq_topic is None:
                tracker.remaining -= 1
                skip_dead_letter(letter)
                continue
            if self.__on_dead_letter is not None:
                self.__on_dead_letter(reason_code(letter.reason))
            log_dead_letter(letter, self.__dlq_topic)
            self.__produce_dead_letter(tracker, letter)

    def __produce_dead_letter(self, tracker: _InFlight, letter: DeadLetter) -> None:
        assert self.__dlq_topic is not None
        try:
            produce_dead_letter(
                self.__producer,
                self.__dlq_topic,
                letter,
                self.__worker,
                lambda error, _message: tracker.dead_letter_delivered(letter, error),
            )
        except BufferError:
            self.__letter_retries.append((tracker, letter, "_QUEUE_FULL"))
            self.__retry_at = time.monotonic() + self.__backoff.next_delay()

    # -- poll -------------------------------------------------------------------------------

    def poll(self) -> None:
        now = time.monotonic()
        # Serving delivery reports every few ms is enough: each `producer.poll` call takes
        # librdkafka's locks, and one per consumed message costs the consumer dearly.
        if self.__in_flight and now >= self.__next_check:
            self.__next_check = now + _CHECK_INTERVAL_SECONDS
            self.__producer.poll(0)
            self.__progress()
            self.__metrics.set_in_flight(self.__outstanding)
        # `CommitOffsets.poll` stages and maybe commits on every call: a few ms apart is
        # plenty (the commit policy works in fractions of a second anyway).
        if now >= self.__next_commit_poll:
            self.__next_commit_poll = now + _CHECK_INTERVAL_SECONDS
            self.__next_step.poll()

    def __progress(self) -> None:
        if self.__failures:
            self.__raise_failure()
        if self.__retries or self.__unsent or self.__letter_retries:
            self.__resend()
        self.__release()

    def __raise_failure(self) -> NoReturn:
        error = self.__failures[0]
        raise OutcomeDeliveryError(
            f"an outcome was refused by Kafka: {error.name()} ({error.str()})"
        )

    def __resend(self) -> None:
        now = time.monotonic()
        if now < self.__retry_at:
            return
        retries = self.__retries[:]
        self.__retries.clear()
        for tracker, value, error_name in retries:
            self.__metrics.produce_retry(error_name)
            tracker.unsent.append({"value": value})
            if tracker not in self.__unsent:
                self.__unsent.append(tracker)
        if retries:
            logger.warning(
                "outcome deliveries failed with a retriable error; producing them again",
                extra={"outcomes": len(retries), "error": retries[0][2]},
            )
        letters, self.__letter_retries = self.__letter_retries, []
        for tracker, letter, error_name in letters:
            self.__metrics.produce_retry(error_name)
            self.__produce_dead_letter(tracker, letter)
        unsent, self.__unsent = self.__unsent, []
        for tracker in unsent:
            payloads, tracker.unsent = tracker.unsent, []
            self.__send(tracker, payloads)
        if (retries or letters) and not self.__unsent:
            # Whatever fails next waits a little longer.
            self.__retry_at = now + self.__backoff.next_delay()
        elif not retries and not letters and not self.__unsent:
            self.__backoff.reset()

    def __release(self) -> None:
        offsets: dict[Partition, int] | None = None
        for partition, queue in self.__queues.items():
            while queue:
                tracker, offset = queue[0]
                if not tracker.done:
                    break
                queue.popleft()
                if offsets is None:
                    offsets = {}
                offsets[partition] = offset
                tracker.pending_partitions -= 1
        if offsets is not None:
            self.__account()
            self.__next_step.submit(Message(Value(FILTERED_PAYLOAD, offsets)))

    def __account(self) -> None:
        """Record the outcomes of every fully released batch (in submission order)."""
        in_flight = self.__in_flight
        released = 0
        now = time.monotonic()
        metrics = self.__metrics
        for tracker in in_flight:
            if tracker.pending_partitions:
                break
            released += 1
            self.__outstanding -= tracker.size
            if tracker.by_category:
                self.__tally.outcomes_acknowledged(tracker.by_category)
                metrics.observe_produce_latency(now - tracker.sent_at)
        if released:
            del in_flight[:released]

    # -- close / join / terminate -----------------------------------------------------------

    def close(self) -> None:
        self.__closed = True

    def terminate(self) -> None:
        self.__closed = True
        self.__next_step.terminate()

    def join(self, timeout: float | None = None) -> None:
        """Wait (bounded by `timeout`) until every batch is done, then forward the offsets."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.__in_flight:
            self.__producer.poll(_JOIN_POLL_SECONDS)
            self.__progress()
            if not self.__in_flight:
                break
            if deadline is not None and time.monotonic() >= deadline:
                pending = sum(tracker.remaining for tracker in self.__in_flight)
                logger.warning(
                    "join timed out; offsets behind unfinished batches stay uncommitted",
                    extra={"batches": len(self.__in_flight), "outcomes_in_flight": pending},
                )
                break
        self.__next_step.close()
        self.__next_step.join(remaining(deadline))

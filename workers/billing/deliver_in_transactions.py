"""`DeliverInTransactions`: outcomes, DLQ copies and input offsets in one Kafka transaction.

The exactly-once counterpart of `DeliverOutcomes` (docs/billing.md, "Exactly once"):

1. a batch waits until its first-custom-metric flag work is durable in PostgreSQL (the flag
   write is idempotent, so doing it for a batch whose transaction later aborts is harmless:
   the replay finds the bit set and records no second analytics event);
2. then, in order, it enters the open transaction (`begin_transaction` on the first one):
   its outcomes and DLQ copies are produced, its offsets noted;
3. once the transaction has been open `transaction_interval` seconds, the offsets are sent
   with the consumer's group metadata (KIP-447: a member that lost its partitions is
   refused) and the transaction is committed; only then are the offsets recorded as the
   chain's committed position.

Any failed delivery, or a commit refused with an abortable error, aborts the transaction
and raises `TransactionAborted`: the caller (`RewindOnAbort`) drops the chain and reads the
partitions again from the last committed offsets. A fenced or fatal producer raises
`ProducerFenced` / `FatalProducerError`, which end the process. Arroyo's own commit is never
called: offsets move only inside transactions.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any, Final, NamedTuple, NoReturn

from arroyo.processing.strategies.abstract import MessageRejected, ProcessingStrategy
from arroyo.types import Message, Partition, Topic
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from workers.billing.batch import OutcomeBatch
from workers.billing.dead_letters import log_dead_letter, produce_dead_letter, skip_dead_letter
from workers.billing.flags import FlagJob, FlagWriter
from workers.billing.metrics import (
    ABORT_COMMIT_ERROR,
    ABORT_PRODUCE_ERROR,
    ABORT_REVOKED,
    BillingMetrics,
)
from workers.billing.tally import BillingTally
from workers.billing.transactions import (
    DEFAULT_TRANSACTION_INTERVAL_SECONDS,
    GroupConsumer,
    TransactionAborted,
    TransactionalProducer,
    is_fenced,
    kafka_error,
    raise_if_fatal,
)
from workers.common.call_watchdog import CallWatchdog
from workers.common.dlq import reason_code

logger = logging.getLogger(__name__)

#: The longest a commit, an abort or an offsets call may block (the broker's
#: `transaction.timeout.ms` bounds a transaction as a whole).
DEFAULT_TRANSACTION_CALL_TIMEOUT_SECONDS: Final = 10.0
#: Outcomes and DLQ copies in the open transaction plus those waiting for it before the
#: chain pushes back (well below librdkafka's 100,000-message producer queue).
DEFAULT_MAX_TRANSACTION_MESSAGES: Final = 50_000
DEFAULT_MAX_WAITING_BATCHES: Final = 1_000

_CHECK_INTERVAL_SECONDS: Final = 0.005
_JOIN_POLL_SECONDS: Final = 0.005


class _Waiting(NamedTuple):
    batch: OutcomeBatch
    offsets: dict[Partition, int]
    job: FlagJob | None


class DeliverInTransactions(ProcessingStrategy[OutcomeBatch]):
    """Commits batches in Kafka transactions together with their input offsets.

    `committed` is shared with `RewindOnAbort`: it holds, per assigned partition, the offset
    after the last committed transaction (at first, where the assignment started) and is
    updated only after a commit succeeded. This step is the end of the chain: it has no next
    step and never calls Arroyo's commit.
    """

    def __init__(
        self,
        producer: TransactionalProducer,
        topic: Topic,
        consumer: GroupConsumer,
        committed: MutableMapping[Partition, int],
        tally: BillingTally,
        *,
        flag_writer: FlagWriter | None = None,
        transaction_interval_seconds: float = DEFAULT_TRANSACTION_INTERVAL_SECONDS,
        call_timeout_seconds: float = DEFAULT_TRANSACTION_CALL_TIMEOUT_SECONDS,
        max_transaction_messages: int = DEFAULT_MAX_TRANSACTION_MESSAGES,
        max_waiting_batches: int = DEFAULT_MAX_WAITING_BATCHES,
        dlq_topic: str | None = None,
        worker: str = "billing",
        on_dead_letter: Callable[[str], None] | None = None,
        watchdog: CallWatchdog | None = None,
        note_committed: Callable[[Mapping[tuple[str, int], int]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.__producer = producer
        self.__watchdog = watchdog if watchdog is not None else CallWatchdog()
        self.__note_committed = note_committed
        self.__topic = topic.name
        self.__consumer = consumer
        self.__committed = committed
        self.__tally = tally
        self.__metrics: BillingMetrics = tally.billing
        self.__flag_writer = flag_writer
        self.__interval = transaction_interval_seconds
        self.__call_timeout = call_timeout_seconds
        self.__max_messages = max_transaction_messages
        self.__max_waiting = max_waiting_batches
        self.__dlq_topic = dlq_topic
        self.__worker = worker
        self.__on_dead_letter = on_dead_letter
        self.__clock = clock
        self.__waiting: deque[_Waiting] = deque()
        self.__waiting_messages = 0
        self.__next_check = 0.0
        self.__closed = False
        self.__reset_transaction()

    def __reset_transaction(self) -> None:
        self.__open = False
        self.__opened_at = 0.0
        self.__offsets: dict[Partition, int] = {}
        self.__by_category: dict[int, list[int]] = {}
        self.__messages = 0
        self.__failure: KafkaError | None = None

    # -- submit -----------------------------------------------------------------------------

    def submit(self, message: Message[OutcomeBatch]) -> None:
        assert not self.__closed
        batch = message.payload
        size = len(batch.payloads) + len(batch.dead_letters)
        if self.__over_budget(size):
            self.__progress(self.__clock())
            if self.__over_budget(size):
                raise MessageRejected()
        job = None
        if batch.candidates and self.__flag_writer is not None:
            job = self.__flag_writer.submit(batch.candidates)
            self.__tally.flag_submitted += len(batch.candidates)
        self.__waiting.append(_Waiting(batch, dict(message.committable), job))
        self.__waiting_messages += size
        self.__enter_ready()

    def __over_budget(self, size: int) -> bool:
        if not self.__waiting and not self.__open:
            return False
        return (
            self.__messages + self.__waiting_messages + size > self.__max_messages
            or len(self.__waiting) >= self.__max_waiting
        )

    def __enter_ready(self) -> None:
        """Produce, in order, every waiting batch whose flag work is durable."""
        waiting = self.__waiting
        while waiting:
            batch, offsets, job = waiting[0]
            if job is not None and not job.done:
                return
            waiting.popleft()
            self.__waiting_messages -= len(batch.payloads) + len(batch.dead_letters)
            self.__produce(batch, offsets)

    def __produce(self, batch: OutcomeBatch, offsets: dict[Partition, int]) -> None:
        producer = self.__producer
        if not self.__open:
            try:
                producer.begin_transaction()
            except KafkaException as exception:
                error = kafka_error(exception)
                self.__raise_if_fatal(error, "begin_transaction")
                raise
            self.__open = True
            self.__opened_at = self.__clock()
        if batch.payloads:
            queued = producer.produce_batch(
                self.__topic, batch.payloads, on_delivery=self.__delivered
            )
            if queued != len(batch.payloads):
                refused = next((m["_error"] for m in batch.payloads if "_error" in m), None)
                self.__fail(
                    refused
                    if isinstance(refused, KafkaError)
                    else KafkaError(KafkaError._QUEUE_FULL)
                )
            self.__tally.produced += len(batch.payloads)
            self.__messages += len(batch.payloads)
            totals = self.__by_category
            for category, (outcomes, quantity) in batch.by_category.items():
                entry = totals.get(category)
                if entry is None:
                    totals[category] = [outcomes, quantity]
                else:
                    entry[0] += outcomes
                    entry[1] += quantity
        for letter in batch.dead_letters:
            if self.__dlq_topic is None:
                skip_dead_letter(letter)
                continue
            if self.__on_dead_letter is not None:
                self.__on_dead_letter(reason_code(letter.reason))
            log_dead_letter(letter, self.__dlq_topic)
            try:
                produce_dead_letter(
                    producer, self.__dlq_topic, letter, self.__worker, self.__delivered
                )
            except BufferError:
                self.__fail(KafkaError(KafkaError._QUEUE_FULL))
            self.__messages += 1
        self.__offsets.update(offsets)

    def __delivered(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None:
            self.__fail(error)

    def __fail(self, error: KafkaError) -> None:
        if self.__failure is None:
            self.__failure = error

    # -- poll -------------------------------------------------------------------------------

    def poll(self) -> None:
        now = self.__clock()
        if now >= self.__next_check:
            self.__next_check = now + _CHECK_INTERVAL_SECONDS
            self.__progress(now)

    def __progress(self, now: float) -> None:
        if self.__open:
            self.__producer.poll(0)
            if self.__failure is not None:
                self.__abort_failed()
        self.__enter_ready()
        if self.__open and now - self.__opened_at >= self.__interval:
            self.__commit()
        self.__metrics.set_in_flight(self.__messages + self.__waiting_messages)

    def __abort_failed(self) -> NoReturn:
        failure = self.__failure
        assert failure is not None
        self.__raise_if_fatal(failure, "delivering an outcome")
        self.__abort(ABORT_PRODUCE_ERROR, f"a delivery failed: {failure.name()} ({failure.str()})")

    def __commit(self, abort_reason: str = ABORT_COMMIT_ERROR) -> None:
        """Send the offsets and commit; abort (and raise) when Kafka refuses."""
        producer = self.__producer
        started = self.__clock()
        positions = [
            TopicPartition(partition.topic.name, partition.index, offset)
            for partition, offset in self.__offsets.items()
        ]
        try:
            if positions:
                timeout = self.__call_timeout
                with self.__watchdog.guard("send_offsets_to_transaction", timeout):
                    producer.send_offsets_to_transaction(
                        positions, self.__consumer.group_metadata(), timeout
                    )
            self.__retrying(producer.commit_transaction, "commit_transaction")
        except KafkaException as exception:
            error = kafka_error(exception)
            self.__raise_if_fatal(error, "committing a transaction")
            self.__abort(abort_reason, f"commit refused: {error.name()} ({error.str()})")
        finished = self.__clock()
        self.__committed.update(self.__offsets)
        if self.__note_committed is not None:
            self.__note_committed(
                {(p.topic.name, p.index): offset for p, offset in self.__offsets.items()}
            )
        if self.__by_category:
            self.__tally.outcomes_acknowledged(self.__by_category)
        self.__metrics.transaction_committed(
            finished - started, finished - self.__opened_at, self.__messages
        )
        self.__reset_transaction()

    def __retrying(self, call: Callable[[float], None], name: str) -> None:
        """`call(timeout)`, again while librdkafka says a retry may succeed (bounded)."""
        deadline = self.__clock() + self.__call_timeout
        while True:
            timeout = max(deadline - self.__clock(), 0.1)
            try:
                with self.__watchdog.guard(name, timeout):
                    call(timeout)
                return
            except KafkaException as exception:
                error = kafka_error(exception)
                if not error.retriable() or self.__clock() >= deadline:
                    raise
                logger.warning(
                    "transaction call failed, retrying",
                    extra={"call": name, "error": error.name()},
                )

    def __raise_if_fatal(self, error: KafkaError, doing: str) -> None:
        """`ProducerFenced` / `FatalProducerError` for what no abort can fix (fencing counted)."""
        if is_fenced(error):
            self.__metrics.producer_fenced()
        raise_if_fatal(error, doing)

    def __abort(self, reason: str, detail: str) -> NoReturn:
        """Abort the open transaction and tell the caller to read its partitions again."""
        self.__abort_open(reason, detail)
        raise TransactionAborted(reason, detail)

    def __abort_open(self, reason: str, detail: str) -> None:
        logger.warning("aborting the open transaction", extra={"reason": reason, "detail": detail})
        try:
            self.__retrying(self.__producer.abort_transaction, "abort_transaction")
        except KafkaException as exception:
            error = kafka_error(exception)
            self.__raise_if_fatal(error, "aborting a transaction")
            raise
        self.__metrics.transaction_aborted(reason)
        self.__waiting.clear()
        self.__waiting_messages = 0
        self.__reset_transaction()

    # -- close / join / terminate -----------------------------------------------------------

    def close(self) -> None:
        self.__closed = True

    def terminate(self) -> None:
        """Drop everything; an open transaction is aborted by the broker or the next owner."""
        self.__closed = True
        self.__waiting.clear()
        self.__waiting_messages = 0

    def join(self, timeout: float | None = None) -> None:
        """Before the partitions go: commit what is ready, or abort (bounded by `timeout`).

        Batches whose flag work is not durable by the deadline are left out: the committed
        offsets stop before them, so whoever reads the partitions next processes them.
        """
        deadline = None if timeout is None else self.__clock() + timeout
        while self.__waiting:
            self.__enter_ready()
            if not self.__waiting:
                break
            if deadline is not None and self.__clock() >= deadline:
                logger.warning(
                    "join timed out waiting for flag work; those batches stay uncommitted",
                    extra={"batches": len(self.__waiting)},
                )
                break
            if self.__open:
                self.__producer.poll(_JOIN_POLL_SECONDS)
            else:
                time.sleep(_JOIN_POLL_SECONDS)
        self.__waiting.clear()
        self.__waiting_messages = 0
        if not self.__open:
            return
        self.__producer.poll(0)
        if self.__failure is not None:
            failure = self.__failure
            self.__raise_if_fatal(failure, "delivering an outcome")
            self.__abort_open(ABORT_REVOKED, f"a delivery failed: {failure.name()}")
            return
        try:
            self.__commit(ABORT_REVOKED)
        except TransactionAborted:
            logger.warning("the last transaction before revocation was aborted")

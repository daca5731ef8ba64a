"""The billing worker's Arroyo chain: generic-metrics buckets in, accepted outcomes out.

    TranslateOutcomes          decode + validate + count + encode; non-billable offsets held
      → AwaitDeliveries        Arroyo's Produce, whose join first waits for in-flight acks
          Produce              one outcome per billable bucket; forwards only acked messages
      → CoalesceCommits        merges acknowledged offsets into one commit per batch
      → CommitOffsets

Commit guarantee: an offset reaches `CommitOffsets` only after every outcome derived from it
and from every earlier message has been acknowledged by Kafka. Arroyo's `Produce` keeps its
messages in submission order and releases them strictly in that order, each only once its
delivery future has resolved; every other message (held non-billable offsets, coalesced
commits) travels through the same queue, so nothing overtakes a pending outcome.

A failed delivery is never dropped: `Produce.poll` re-raises the future's exception (a
`TransportError`) and keeps the failed message at the head of its queue, so nothing behind it
is released. The exception escapes `StreamProcessor.run`, which terminates the chain and
closes the consumer (librdkafka then commits only offsets stored earlier); the process exits
non-zero and is restarted, and the uncommitted messages are consumed again (at-least-once).

Speed: the per-message work is one orjson parse, a handful of type checks, a dict lookup and
(for billable buckets) one f-string. Non-billable messages never enter `Produce`: their
offsets are held and forwarded as one `FilteredPayload` per batch, like Arroyo's `FilterStep`
with a commit policy. Acknowledged offsets are merged the same way before `CommitOffsets`,
so the consumer stores offsets once per batch instead of once per message. Metrics are plain
integer tallies flushed once a second.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping
from concurrent.futures import Future
from datetime import datetime
from functools import partial
from typing import Any, Final, NoReturn

from arroyo.backends.abstract import Producer, ProducerFuture
from arroyo.backends.kafka import KafkaPayload, KafkaProducer
from arroyo.dlq import InvalidMessage
from arroyo.processing.strategies import CommitOffsets, Produce
from arroyo.processing.strategies.abstract import (
    MessageRejected,
    ProcessingStrategy,
    ProcessingStrategyFactory,
)
from arroyo.types import (
    FILTERED_PAYLOAD,
    BaseValue,
    BrokerValue,
    Commit,
    FilteredPayload,
    Message,
    Partition,
    Topic,
    Value,
)

from workers.billing.counting import BillableOutcome, BillingCounter
from workers.billing.message import BucketError, parse_bucket
from workers.billing.metrics import LATENCY_SAMPLE_EVERY, BillingTally, MetricsSource
from workers.billing.outcome import ClockNs, OutcomeEncoder

logger = logging.getLogger(__name__)

DEFAULT_OUTCOMES_TOPIC: Final = "outcomes-billing"
OUTCOMES_CLIENT_ID: Final = "billing-outcomes"
#: Outcomes (and held offsets) waiting for acknowledgement before `Produce` pushes back.
DEFAULT_MAX_PENDING_OUTCOMES: Final = 10_000
#: Offsets are forwarded for commit after this many messages or this many seconds.
DEFAULT_COMMIT_BATCH_MESSAGES: Final = 1_000
DEFAULT_COMMIT_BATCH_SECONDS: Final = 0.2
#: How long `shutdown()` waits for the outcomes producer to flush.
DEFAULT_PRODUCER_CLOSE_TIMEOUT_SECONDS: Final = 10.0

_SAMPLE_MASK: Final = LATENCY_SAMPLE_EVERY - 1
_JOIN_POLL_SECONDS: Final = 0.001

BillingPayload = KafkaPayload | FilteredPayload

# `KafkaPayload` is a NamedTuple: building the tuple directly skips its Python `__new__`.
# Outcomes carry no key and no headers (a shared empty tuple).
_new_payload: Final = partial(tuple.__new__, KafkaPayload)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


class TranslateOutcomes(ProcessingStrategy[BillingPayload]):
    """Decodes each bucket and forwards one outcome per billable bucket.

    Invalid input raises `InvalidMessage` (routed to the DLQ by the runtime) with a reason
    `"<code>: <detail>"`. Non-billable messages (and DLQ'd ones) are not forwarded one by one:
    their offsets are held and forwarded as one `FilteredPayload` message after
    `max_held_messages` messages or `max_held_seconds`, and on `join`. When a billable message
    of a partition is forwarded, held offsets of that partition are dropped (they are lower
    and the outcome's own offset covers them), so a commit never goes backwards.

    The work is pure, so a message the next step rejects is simply kept and forwarded again
    when the processor resubmits it (no second encode, no double counting).
    """

    def __init__(
        self,
        next_step: ProcessingStrategy[BillingPayload],
        counter: BillingCounter,
        encoder: OutcomeEncoder,
        tally: BillingTally,
        *,
        max_held_messages: int = DEFAULT_COMMIT_BATCH_MESSAGES,
        max_held_seconds: float = DEFAULT_COMMIT_BATCH_SECONDS,
    ) -> None:
        self.__next_step = next_step
        self.__counter = counter
        self.__encoder = encoder
        self.__tally = tally
        self.__max_held_messages = max_held_messages
        self.__max_held_seconds = max_held_seconds
        self.__held: MutableMapping[Partition, int] = {}
        self.__held_messages = 0
        self.__held_deadline = 0.0
        self.__carried: (
            tuple[BaseValue[BillingPayload], Message[BillingPayload], BillableOutcome] | None
        ) = None
        self.__seen = 0
        self.__closed = False

    def submit(self, message: Message[BillingPayload]) -> None:
        assert not self.__closed
        value = message.value
        carried = self.__carried
        if carried is not None:
            self.__carried = None
            if carried[0] is value:
                self.__forward(value, carried[1], carried[2])
                return

        payload = value.payload
        if isinstance(payload, FilteredPayload):
            self.__hold(value.committable)
            return

        self.__seen += 1
        started = time.perf_counter() if not self.__seen & _SAMPLE_MASK else 0.0
        try:
            bucket = parse_bucket(payload.value)
        except BucketError as error:
            self.__reject(value, error)
        outcome = self.__counter.count(bucket)
        if outcome is None:
            self.__tally.decoded += 1
            self.__hold(value.committable)
        else:
            data = self.__encoder.encode(
                outcome.org_id, outcome.project_id, outcome.category, outcome.quantity
            )
            self.__forward(value, Message(value.replace(_new_payload((None, data, ())))), outcome)
        if started:
            self.__tally.observe_decode_latency(time.perf_counter() - started)

    def __forward(
        self,
        value: BaseValue[BillingPayload],
        transformed: Message[BillingPayload],
        outcome: BillableOutcome,
    ) -> None:
        try:
            self.__next_step.submit(transformed)
        except MessageRejected:
            self.__carried = (value, transformed, outcome)
            raise
        if self.__held:
            for partition in transformed.committable:
                self.__held.pop(partition, None)
        tally = self.__tally
        tally.decoded += 1
        tally.billable += 1
        tally.outcome(outcome.category, outcome.quantity)

    def __hold(self, committable: Mapping[Partition, int]) -> None:
        if not self.__held:
            self.__held_deadline = time.monotonic() + self.__max_held_seconds
        self.__held.update(committable)
        self.__held_messages += 1
        if self.__held_messages >= self.__max_held_messages:
            self.__flush_held()

    def __flush_held(self) -> bool:
        """Forward the held offsets; False when the next step pushed back (kept for later)."""
        if self.__held:
            try:
                self.__next_step.submit(Message(Value(FILTERED_PAYLOAD, self.__held)))
            except MessageRejected:
                return False
        self.__held = {}
        self.__held_messages = 0
        return True

    def __reject(self, value: BaseValue[BillingPayload], error: BucketError) -> NoReturn:
        self.__tally.invalid(error.code)
        if not isinstance(value, BrokerValue):
            raise error
        # Commit past it with the next batch of held offsets (it is DLQ'd before that).
        self.__hold(value.committable)
        raise InvalidMessage(
            value.partition, value.offset, reason=error.reason, log_exception=False
        ) from None

    def poll(self) -> None:
        self.__next_step.poll()
        now = time.monotonic()
        if self.__held and now >= self.__held_deadline:
            self.__flush_held()
        self.__tally.maybe_flush(now)

    def close(self) -> None:
        self.__closed = True

    def terminate(self) -> None:
        self.__closed = True
        self.__next_step.terminate()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.__flush_held():
            if deadline is not None and time.monotonic() >= deadline:
                logger.warning("join timed out before held offsets could be forwarded")
                break
            self.__next_step.poll()
            time.sleep(_JOIN_POLL_SECONDS)
        self.__next_step.close()
        self.__next_step.join(_remaining(deadline))
        self.__tally.flush()


class DeliveryTracker(Producer[KafkaPayload]):
    """A view of the shared outcomes producer that remembers this chain's delivery futures.

    `AwaitDeliveries` uses it to wait for in-flight outcomes on `join`. It does not own the
    producer: `close()` leaves it open (the factory closes it on `shutdown()`).
    """

    def __init__(self, producer: Producer[KafkaPayload], tally: BillingTally) -> None:
        self.__producer = producer
        self.__tally = tally
        self.__pending: deque[ProducerFuture[BrokerValue[KafkaPayload]]] = deque()

    def produce(
        self, destination: Topic | Partition, payload: KafkaPayload
    ) -> ProducerFuture[BrokerValue[KafkaPayload]]:
        future = self.__producer.produce(destination, payload)
        pending = self.__pending
        while pending and pending[0].done():
            pending.popleft()
        pending.append(future)
        self.__tally.produced += 1
        return future

    def in_flight(self) -> int:
        """Outcomes handed to the producer whose delivery has not been reported yet."""
        pending = self.__pending
        while pending and pending[0].done():
            pending.popleft()
        return sum(1 for future in pending if not future.done())

    def close(self) -> Future[None]:
        done: Future[None] = Future()
        done.set_result(None)
        return done


class AwaitDeliveries(ProcessingStrategy[BillingPayload]):
    """Arroyo's `Produce`, with a `join` that first waits for the in-flight deliveries.

    `Produce.join` stops at the first unacknowledged outcome, so on every rebalance or
    shutdown the offsets behind outcomes still in flight (a few ms of traffic) would stay
    uncommitted and their outcomes would be produced twice by the next owner. This wrapper
    keeps polling `Produce` until the tracker reports no delivery in flight or the join
    timeout expires, then lets `Produce.join` forward what is done.
    """

    def __init__(
        self, produce: ProcessingStrategy[BillingPayload], tracker: DeliveryTracker
    ) -> None:
        self.__produce = produce
        self.__tracker = tracker

    def submit(self, message: Message[BillingPayload]) -> None:
        self.__produce.submit(message)

    def poll(self) -> None:
        self.__produce.poll()

    def close(self) -> None:
        self.__produce.close()

    def terminate(self) -> None:
        self.__produce.terminate()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.__tracker.in_flight():
            if deadline is not None and time.monotonic() >= deadline:
                logger.warning(
                    "join timed out with %d outcomes in flight; their offsets stay uncommitted",
                    self.__tracker.in_flight(),
                )
                break
            self.__produce.poll()
            time.sleep(_JOIN_POLL_SECONDS)
        self.__produce.join(_remaining(deadline))


class CoalesceCommits(ProcessingStrategy[BillingPayload]):
    """Merges the offsets of released messages into one message per batch for `CommitOffsets`.

    Everything it receives has already been acknowledged (it sits behind `Produce`), so a
    merged commit is exactly as safe as the individual ones; it only saves the consumer one
    offset store per message. Counts acknowledged outcomes for the `produce` step.
    """

    def __init__(
        self,
        next_step: ProcessingStrategy[Any],
        tally: BillingTally,
        *,
        max_messages: int = DEFAULT_COMMIT_BATCH_MESSAGES,
        max_seconds: float = DEFAULT_COMMIT_BATCH_SECONDS,
    ) -> None:
        self.__next_step = next_step
        self.__tally = tally
        self.__max_messages = max_messages
        self.__max_seconds = max_seconds
        self.__offsets: dict[Partition, int] = {}
        self.__timestamp: datetime | None = None
        self.__messages = 0
        self.__deadline = 0.0
        self.__next_poll = 0.0

    def submit(self, message: Message[BillingPayload]) -> None:
        value = message.value
        if not isinstance(value.payload, FilteredPayload):
            self.__tally.acknowledged += 1
        if not self.__messages:
            self.__deadline = time.monotonic() + self.__max_seconds
        self.__offsets.update(value.committable)
        timestamp = value.timestamp
        if timestamp is not None:
            self.__timestamp = timestamp
        self.__messages += 1
        if self.__messages >= self.__max_messages:
            self.__forward()

    def __forward(self) -> None:
        if self.__messages:
            offsets, self.__offsets = self.__offsets, {}
            timestamp, self.__timestamp = self.__timestamp, None
            self.__messages = 0
            self.__next_step.submit(Message(Value(FILTERED_PAYLOAD, offsets, timestamp)))

    def poll(self) -> None:
        # `Produce` polls its next step once per released message; keep that cheap and let
        # `CommitOffsets` (which may commit on every poll) run at most every few ms.
        now = time.monotonic()
        if self.__messages and now >= self.__deadline:
            self.__forward()
        if now >= self.__next_poll:
            self.__next_poll = now + 0.01
            self.__next_step.poll()

    def close(self) -> None:
        self.__next_step.close()

    def terminate(self) -> None:
        self.__next_step.terminate()

    def join(self, timeout: float | None = None) -> None:
        self.__forward()
        self.__next_step.join(timeout)


class BillingStrategyFactory(ProcessingStrategyFactory[KafkaPayload]):
    """Builds the billing chain on every assignment; owns one outcomes producer per process.

    `producer_factory` is called once, on the first assignment (so building the factory does
    not connect to Kafka); `shutdown()` closes the producer, which flushes what is in flight.
    """

    def __init__(
        self,
        *,
        producer_factory: Callable[[], Producer[KafkaPayload]],
        metrics: MetricsSource,
        outcomes_topic: str = DEFAULT_OUTCOMES_TOPIC,
        billable_metrics: Mapping[int, int] | None = None,
        clock_ns: ClockNs = time.time_ns,
        max_pending_outcomes: int = DEFAULT_MAX_PENDING_OUTCOMES,
        commit_batch_messages: int = DEFAULT_COMMIT_BATCH_MESSAGES,
        commit_batch_seconds: float = DEFAULT_COMMIT_BATCH_SECONDS,
        producer_close_timeout: float = DEFAULT_PRODUCER_CLOSE_TIMEOUT_SECONDS,
    ) -> None:
        if max_pending_outcomes < 1 or commit_batch_messages < 1:
            raise ValueError("max_pending_outcomes and commit_batch_messages must be >= 1")
        self.__producer_factory = producer_factory
        self.__producer: Producer[KafkaPayload] | None = None
        self.__topic = Topic(outcomes_topic)
        self.__counter = (
            BillingCounter() if billable_metrics is None else BillingCounter(billable_metrics)
        )
        self.__encoder = OutcomeEncoder(clock_ns)
        self.__max_pending_outcomes = max_pending_outcomes
        self.__commit_batch_messages = commit_batch_messages
        self.__commit_batch_seconds = commit_batch_seconds
        self.__producer_close_timeout = producer_close_timeout
        self.tally = BillingTally(metrics)

    @property
    def outcomes_topic(self) -> Topic:
        return self.__topic

    @property
    def counter(self) -> BillingCounter:
        return self.__counter

    def __get_producer(self) -> Producer[KafkaPayload]:
        if self.__producer is None:
            self.__producer = self.__producer_factory()
        return self.__producer

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        tracker = DeliveryTracker(self.__get_producer(), self.tally)
        commit_step = CoalesceCommits(
            CommitOffsets(commit),
            self.tally,
            max_messages=self.__commit_batch_messages,
            max_seconds=self.__commit_batch_seconds,
        )
        produce: Produce[KafkaPayload] = Produce(
            tracker, self.__topic, commit_step, max_buffer_size=self.__max_pending_outcomes
        )
        return TranslateOutcomes(
            AwaitDeliveries(produce, tracker),
            self.__counter,
            self.__encoder,
            self.tally,
            max_held_messages=self.__commit_batch_messages,
            max_held_seconds=self.__commit_batch_seconds,
        )

    def shutdown(self) -> None:
        producer, self.__producer = self.__producer, None
        if producer is None:
            return
        try:
            producer.close().result(timeout=self.__producer_close_timeout)
        except TimeoutError:
            logger.warning(
                "outcomes producer did not flush within %.1f s", self.__producer_close_timeout
            )


def build_kafka_producer(configuration: Mapping[str, Any]) -> KafkaProducer:
    """Arroyo's producer with cheap futures (no condition variable per message)."""
    return KafkaProducer(configuration, use_simple_futures=True)

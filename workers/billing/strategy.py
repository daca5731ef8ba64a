"""The billing worker's Arroyo chain: generic-metrics buckets in, accepted outcomes out.

    TranslateOutcomes   decode + validate + count + encode (or aggregate) + spot custom
                        metrics; closes one `OutcomeBatch` per N messages / T seconds
      → DeliverOutcomes produces each batch with confluent-kafka's `Producer.produce_batch`
                        and one delivery callback per batch, hands its custom-metric
                        projects to the `FlagWriter`, and from `poll()` forwards the offsets
                        whose outcomes and flag work (and everything before them) are done
      → CommitOffsets

Commit guarantee: an offset reaches `CommitOffsets` only after every outcome derived from it
and from every earlier message of its partition has been acknowledged by Kafka, and after
the flag work of those messages is durable. `DeliverOutcomes` keeps, per input partition, a
queue of (batch, next offset) in submission order and releases its head only while the head
batch is complete; a slow batch holds back only the partitions it has messages from.

Delivery errors: librdkafka already retries inside `message.timeout.ms`; a delivery that still
fails with a retriable error (timeout, transport, unknown topic or partition, queue full...)
is produced again after a backoff, and its batch stays incomplete meanwhile, so a broker or
topic outage stalls commits, fills the in-flight budget, backpressures the consumer
(`MessageRejected`; Arroyo pauses the partitions after 5 s while still polling) and resumes
by itself without losing an outcome. A non-retriable error (message too large, authorization,
a fatal producer error) raises `OutcomeDeliveryError` from `poll()` and is raised again on
every later poll: the processor terminates, the offset is never committed past the failed
outcome, and the restarted process reprocesses from the last commit (at-least-once).

Speed: no Future and no Arroyo `Message` per outcome. Per input message the chain does one
typed msgspec decode (`parse_bucket`), a few checks, a dict lookup or two and (for billable
buckets) one bytes %-format and a list append, in one loop over a run whose state is held in
locals and written back once; the producer is called once per batch, delivery callbacks
are plain integer decrements, offsets are stored once per batch, and metrics are integer
tallies flushed once a second. `poll()` of the producer runs on the consumer thread, so no
thread competes for the GIL with the consumer (Arroyo's `KafkaProducer` resolves futures on
a polling thread, which is where the previous chain lost most of its time).

Aggregation (`aggregate_window_seconds`, off by default): quantities are summed per
(org, project, category) for one window of processing time and each sum is produced as one
outcome when the window closes (stamped with that time); the window is one batch, so its
offsets are committed only after its aggregates are acknowledged.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any, Final, NoReturn, Protocol

from arroyo.backends.kafka import KafkaPayload
from arroyo.dlq import InvalidMessage
from arroyo.processing.strategies import CommitOffsets
from arroyo.processing.strategies.abstract import (
    MessageRejected,
    ProcessingStrategy,
    ProcessingStrategyFactory,
)
from arroyo.types import (
    FILTERED_PAYLOAD,
    BrokerValue,
    Commit,
    FilteredPayload,
    Message,
    Partition,
    Topic,
    Value,
)
from confluent_kafka import KafkaError

from workers.billing.backoff import Backoff
from workers.billing.counting import BillingCounter
from workers.billing.custom_metrics import CustomMetricDetector
from workers.billing.flags import FlagJob, FlagStore, FlagWriter, ProjectKey
from workers.billing.message import BucketError, parse_bucket
from workers.billing.metrics import (
    KNOWN_USE_CASES,
    LATENCY_SAMPLE_EVERY,
    OTHER_USE_CASE,
    BillingMetrics,
    BillingTally,
    MetricsSource,
)
from workers.billing.outcome import ClockNs, OutcomeEncoder
from workers.common.dlq import dlq_headers, reason_code
from workers.common.message_runs import MessageRun, RawMessage

logger = logging.getLogger(__name__)

DEFAULT_OUTCOMES_TOPIC: Final = "outcomes-billing"
OUTCOMES_CLIENT_ID: Final = "billing-outcomes"
#: Outcomes handed to the producer and not yet acknowledged before the chain pushes back.
DEFAULT_MAX_PENDING_OUTCOMES: Final = 50_000
#: Batches whose outcomes or flag work are not done before the chain pushes back.
DEFAULT_MAX_PENDING_BATCHES: Final = 1_000
#: A batch closes after this many messages, this many outcomes or this many seconds.
DEFAULT_MAX_BATCH_MESSAGES: Final = 5_000
DEFAULT_MAX_BATCH_OUTCOMES: Final = 1_000
DEFAULT_MAX_BATCH_SECONDS: Final = 0.02
#: An aggregation window also closes when it holds this many distinct keys.
DEFAULT_MAX_AGGREGATE_KEYS: Final = 10_000
#: How long `shutdown()` waits for the outcomes producer to flush.
DEFAULT_PRODUCER_CLOSE_TIMEOUT_SECONDS: Final = 10.0
DEFAULT_FLAG_WRITER_CLOSE_TIMEOUT_SECONDS: Final = 10.0

_SAMPLE_SHIFT: Final = LATENCY_SAMPLE_EVERY.bit_length() - 1
_JOIN_POLL_SECONDS: Final = 0.005
_CHECK_INTERVAL_SECONDS: Final = 0.005

DeliveryCallback = Callable[[Any, Any], None]

#: Delivery errors that are worth producing again (after a backoff) instead of crashing.
RETRIABLE_ERROR_CODES: Final = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TIMED_OUT_QUEUE,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._QUEUE_FULL,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    }
)


def is_retriable(error: KafkaError) -> bool:
    if error.fatal():
        return False
    return bool(error.retriable()) or error.code() in RETRIABLE_ERROR_CODES


class OutcomeProducer(Protocol):
    """What the chain needs of `confluent_kafka.Producer`."""

    def produce_batch(
        self,
        topic: str,
        messages: list[dict[str, Any]],
        partition: int = -1,
        callback: DeliveryCallback | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> int: ...

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        # confluent-kafka's own type is a list of (str, str | bytes | None) pairs.
        headers: Any = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None: ...

    def poll(self, timeout: float = -1) -> int: ...

    def flush(self, timeout: float = -1) -> int: ...

    def __len__(self) -> int: ...


class OutcomeDeliveryError(RuntimeError):
    """Kafka refused an outcome for good; its offset (and everything after) stays uncommitted."""


class OutcomeBatch:
    """What `TranslateOutcomes` hands to `DeliverOutcomes` for a run of input messages."""

    __slots__ = ("by_category", "candidates", "dead_letters", "messages", "payloads")

    def __init__(
        self,
        payloads: list[dict[str, Any]],
        by_category: dict[int, list[int]],
        candidates: frozenset[ProjectKey],
        messages: int,
        dead_letters: list[DeadLetter] | None = None,
    ) -> None:
        # `{"value": outcome bytes}` per outcome, as `produce_batch` takes them.
        self.payloads = payloads
        # category -> [outcomes, quantity]
        self.by_category = by_category
        # Custom-metric projects of these messages this process does not know to be flagged.
        self.candidates = candidates
        self.messages = messages
        # Invalid messages of runs, to be copied to the DLQ topic before the offsets move on.
        self.dead_letters: list[DeadLetter] = dead_letters if dead_letters is not None else []


class DeadLetter:
    """An invalid message of a `MessageRun`, with where it came from and why it is invalid."""

    __slots__ = ("message", "partition", "reason")

    def __init__(self, message: RawMessage, partition: Partition, reason: str) -> None:
        self.message = message
        self.partition = partition
        self.reason = reason


class _OneValue:
    """One `KafkaPayload`'s value, shaped like a message of a run for `__translate`."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value

    def key(self) -> None:
        return None

    def headers(self) -> None:
        return None

    def offset(self) -> None:
        return None


BatchPayload = OutcomeBatch | FilteredPayload


InputPayload = KafkaPayload | MessageRun | FilteredPayload


class TranslateOutcomes(ProcessingStrategy[InputPayload]):
    """Decodes each bucket, counts it, and closes the outcomes of a run of messages as a batch.

    Input is either one message per Arroyo message (`KafkaPayload`, from Arroyo's own
    consumer) or a `MessageRun` (from `RunConsumer`, the fleet's default for this worker).
    Invalid input gets a reason `"<code>: <detail>"`: a single message raises
    `InvalidMessage` (routed to the DLQ by the runtime, which flushes the copy before it
    commits); an invalid message of a run becomes a `DeadLetter` of the current batch, which
    the next step copies to the DLQ topic before the batch's offsets are released. Either
    way its offset belongs to the current batch and is committed past once the batch is done.

    `MessageRejected` is raised only before a message is touched (while a closed batch still
    waits for the next step), so a resubmitted message is never counted twice. A run may
    close several batches; they wait in order for the next step.
    """

    def __init__(
        self,
        next_step: ProcessingStrategy[BatchPayload],
        counter: BillingCounter,
        encoder: OutcomeEncoder,
        tally: BillingTally,
        *,
        detector: CustomMetricDetector | None = None,
        known_flagged: Container[ProjectKey] = frozenset(),
        max_batch_messages: int = DEFAULT_MAX_BATCH_MESSAGES,
        max_batch_outcomes: int = DEFAULT_MAX_BATCH_OUTCOMES,
        max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS,
        aggregate_window_seconds: float | None = None,
        max_aggregate_keys: int = DEFAULT_MAX_AGGREGATE_KEYS,
    ) -> None:
        self.__next_step = next_step
        self.__categories = dict(counter.categories)
        self.__encode = encoder.encode
        self.__tally = tally
        self.__detector = detector
        self.__known = known_flagged
        self.__max_messages = max_batch_messages
        self.__aggregating = aggregate_window_seconds is not None
        if aggregate_window_seconds is not None:
            self.__max_outcomes = max_aggregate_keys
            self.__max_seconds = aggregate_window_seconds
        else:
            self.__max_outcomes = max_batch_outcomes
            self.__max_seconds = max_batch_seconds
        self.__partitions: dict[int, Partition] = {}
        self.__carried: deque[Message[BatchPayload]] = deque()
        self.__seen = 0
        self.__closed = False
        self.__reset()

    def __reset(self) -> None:
        self.__offsets: dict[int, int] = {}
        self.__payloads: list[dict[str, Any]] = []
        self.__sums: dict[tuple[int, int, int], int] = {}
        # category -> [billable buckets, quantity]
        self.__stats: dict[int, list[int]] = {}
        self.__candidates: set[ProjectKey] = set()
        self.__dead_letters: list[DeadLetter] = []
        self.__messages = 0
        self.__deadline = 0.0

    def submit(self, message: Message[InputPayload]) -> None:
        assert not self.__closed
        if self.__carried and not self.__forward_carried():
            raise MessageRejected()
        value = message.value
        if self.__messages == 0:
            self.__deadline = time.monotonic() + self.__max_seconds
        if type(value) is BrokerValue:
            partition = value.partition
            if partition.index not in self.__partitions:
                self.__partitions[partition.index] = partition
            payload = value.payload
            if type(payload) is MessageRun:
                self.__submit_run(payload, partition)
                return
            self.__offsets[partition.index] = value.offset + 1
        else:
            self.__note_committable(value.committable)
            payload = value.payload
        if isinstance(payload, FilteredPayload):
            self.__messages += 1
            self.__maybe_close()
            return
        assert isinstance(payload, KafkaPayload)
        try:
            self.__translate((_OneValue(payload.value),), 0, None)
        except BucketError as error:
            if not isinstance(value, BrokerValue):
                raise
            self.__maybe_close()
            raise InvalidMessage(
                value.partition, value.offset, reason=error.reason, log_exception=False
            ) from None
        self.__maybe_close()

    def __submit_run(self, run: MessageRun, partition: Partition) -> None:
        messages = run.messages
        index = partition.index
        start = 0
        while True:
            end = self.__translate(messages, start, partition)
            offset = messages[end - 1].offset()
            assert offset is not None
            self.__offsets[index] = offset + 1
            if end == len(messages):
                break
            # The batch filled up inside the run: its offsets end at message `end - 1`.
            self.__close_batch()
            self.__deadline = time.monotonic() + self.__max_seconds
            start = end
        self.__maybe_close()

    def __translate(
        self, messages: Sequence[RawMessage], start: int, partition: Partition | None
    ) -> int:
        """Decode, count and encode `messages[start:]` until the batch is full.

        Returns the position after the last message taken (at least one is). An invalid
        message becomes a `DeadLetter` of `partition`; without a partition (one message
        from Arroyo's own consumer) its `BucketError` is raised. The hot path: what it
        touches per message is a local, and the batch's counts are written back once.
        """
        tally = self.__tally
        by_type = tally.by_type_use_case
        categories = self.__categories
        stats = self.__stats
        aggregating = self.__aggregating
        payloads = self.__payloads
        sums = self.__sums
        max_outcomes = self.__max_outcomes
        encode = self.__encode
        detector = self.__detector
        is_custom = detector.is_custom if detector is not None else None
        known = self.__known
        candidates = self.__candidates
        stop = min(len(messages), start + max(self.__max_messages - self.__messages, 1))
        started = time.perf_counter()
        position = start
        decoded = 0
        try:
            while position < stop:
                raw = messages[position]
                position += 1
                try:
                    org_id, project_id, metric_id, metric_type, _, use_case, counter, meta = (
                        parse_bucket(raw.value() or b"")
                    )
                except BucketError as error:
                    tally.invalid(error.code)
                    if partition is None:
                        raise
                    self.__dead_letters.append(DeadLetter(raw, partition, error.reason))
                    continue
                decoded += 1
                if use_case not in KNOWN_USE_CASES:
                    use_case = OTHER_USE_CASE
                type_key = (metric_type, use_case)
                by_type[type_key] = by_type.get(type_key, 0) + 1
                full = False
                if counter is not None:
                    category = categories.get(metric_id)
                    if category is not None:
                        quantity = int(counter)
                        if quantity >= 1:
                            entry = stats.get(category)
                            if entry is None:
                                stats[category] = [1, quantity]
                            else:
                                entry[0] += 1
                                entry[1] += quantity
                            if aggregating:
                                key = (org_id, project_id, category)
                                sums[key] = sums.get(key, 0) + quantity
                                full = len(sums) >= max_outcomes
                            else:
                                payloads.append(
                                    {"value": encode(org_id, project_id, category, quantity)}
                                )
                                full = len(payloads) >= max_outcomes
                if meta and is_custom is not None and is_custom(meta, metric_id):
                    project = (org_id, project_id)
                    if project in known:
                        tally.process_cache_hits += 1
                    else:
                        candidates.add(project)
                if full:
                    break
        finally:
            taken = position - start
            self.__messages += taken
            tally.decoded += decoded
            seen = self.__seen
            self.__seen = seen + taken
        if (seen + taken) >> _SAMPLE_SHIFT != seen >> _SAMPLE_SHIFT:
            # About one observation per LATENCY_SAMPLE_EVERY messages: the mean of this call.
            tally.observe_decode_latency((time.perf_counter() - started) / taken)
        return position

    def __maybe_close(self) -> None:
        if (
            self.__messages >= self.__max_messages
            or len(self.__payloads) >= self.__max_outcomes
            or len(self.__sums) >= self.__max_outcomes
        ):
            self.__close_batch()

    def __note_committable(self, committable: Mapping[Partition, int]) -> None:
        for partition, offset in committable.items():
            self.__offsets[partition.index] = offset
            self.__partitions.setdefault(partition.index, partition)

    def __close_batch(self) -> None:
        """Turn the current run of messages into one batch message for the next step."""
        if not self.__messages:
            return
        payloads = self.__payloads
        stats = self.__stats
        by_category: dict[int, list[int]] = {}
        if self.__aggregating:
            encode = self.__encode
            for (org_id, project_id, category), quantity in self.__sums.items():
                payloads.append({"value": encode(org_id, project_id, category, quantity)})
                entry = by_category.get(category)
                if entry is None:
                    by_category[category] = [1, quantity]
                else:
                    entry[0] += 1
                    entry[1] += quantity
        else:
            by_category = stats
        tally = self.__tally
        for category, (billable, _) in stats.items():
            tally.billable += billable
            tally.billable_by_category[category] = (
                tally.billable_by_category.get(category, 0) + billable
            )
        partitions = self.__partitions
        committable = {partitions[index]: offset for index, offset in self.__offsets.items()}
        batch = OutcomeBatch(
            payloads,
            by_category,
            frozenset(self.__candidates),
            self.__messages,
            self.__dead_letters,
        )
        self.__reset()
        self.__carried.append(Message(Value(batch, committable)))
        self.__forward_carried()

    def __forward_carried(self) -> bool:
        """Hand closed batches on, in order; False when the next step pushed back."""
        carried = self.__carried
        while carried:
            try:
                self.__next_step.submit(carried[0])
            except MessageRejected:
                return False
            carried.popleft()
        return True

    def poll(self) -> None:
        if self.__carried:
            self.__forward_carried()
        now = time.monotonic()
        if self.__messages and now >= self.__deadline and not self.__carried:
            self.__close_batch()
        self.__next_step.poll()
        self.__tally.maybe_flush(now)

    def close(self) -> None:
        self.__closed = True

    def terminate(self) -> None:
        self.__closed = True
        self.__next_step.terminate()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        self.__close_batch()
        while not self.__forward_carried():
            if deadline is not None and time.monotonic() >= deadline:
                logger.warning("join timed out before the last batches could be handed on")
                break
            # The next step is over its in-flight budget: let it make progress, then retry.
            time.sleep(_JOIN_POLL_SECONDS)
            self.__next_step.poll()
        self.__next_step.close()
        self.__next_step.join(_remaining(deadline))
        self.__tally.flush()


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


class DeliverOutcomes(ProcessingStrategy[BatchPayload]):
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

    def submit(self, message: Message[BatchPayload]) -> None:
        assert not self.__closed
        batch = message.payload
        if self.__in_flight and self.__over_budget(batch):
            self.__producer.poll(0)
            self.__progress()
            if self.__in_flight and self.__over_budget(batch):
                raise MessageRejected()
        committable = message.committable
        if isinstance(batch, FilteredPayload):
            batch = OutcomeBatch([], {}, frozenset(), 0)
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

    def __over_budget(self, batch: BatchPayload) -> bool:
        size = len(batch.payloads) if isinstance(batch, OutcomeBatch) else 0
        return (
            self.__outstanding + size > self.__max_pending_outcomes
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
            code = reason_code(letter.reason)
            message = letter.message
            offset = message.offset()
            if self.__dlq_topic is None:
                tracker.remaining -= 1
                logger.warning(
                    "invalid message skipped (no DLQ topic)",
                    extra={"partition": letter.partition.index, "offset": offset, "reason": code},
                )
                continue
            if self.__on_dead_letter is not None:
                self.__on_dead_letter(code)
            logger.warning(
                "message sent to DLQ",
                extra={
                    "dlq_topic": self.__dlq_topic,
                    "partition": letter.partition.index,
                    "offset": offset,
                    "reason": letter.reason,
                },
            )
            self.__produce_dead_letter(tracker, letter)

    def __produce_dead_letter(self, tracker: _InFlight, letter: DeadLetter) -> None:
        assert self.__dlq_topic is not None
        message = letter.message
        offset = message.offset()
        assert offset is not None
        try:
            self.__producer.produce(
                self.__dlq_topic,
                message.value(),
                message.key(),
                headers=dlq_headers(
                    message.headers() or (),
                    letter.partition,
                    offset,
                    letter.reason,
                    self.__worker,
                ),
                on_delivery=lambda error, _message: tracker.dead_letter_delivered(letter, error),
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
        self.__next_step.join(_remaining(deadline))


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


class BillingStrategyFactory(ProcessingStrategyFactory[InputPayload]):
    """Builds the billing chain on every assignment; owns the per-process resources.

    One outcomes producer and one flag writer per process, both built on the first
    assignment (building the factory connects to nothing); `shutdown()` stops the flag writer
    and flushes the producer. `flag_store_factory=None` disables the first-custom-metric flag.
    """

    def __init__(
        self,
        *,
        producer_factory: Callable[[], OutcomeProducer],
        metrics: MetricsSource,
        flag_store_factory: Callable[[BillingMetrics], FlagStore] | None = None,
        outcomes_topic: str = DEFAULT_OUTCOMES_TOPIC,
        billable_metrics: Mapping[int, int] | None = None,
        clock_ns: ClockNs = time.time_ns,
        max_pending_outcomes: int = DEFAULT_MAX_PENDING_OUTCOMES,
        max_pending_batches: int = DEFAULT_MAX_PENDING_BATCHES,
        max_batch_messages: int = DEFAULT_MAX_BATCH_MESSAGES,
        max_batch_outcomes: int = DEFAULT_MAX_BATCH_OUTCOMES,
        max_batch_seconds: float = DEFAULT_MAX_BATCH_SECONDS,
        aggregate_window_seconds: float | None = None,
        max_aggregate_keys: int = DEFAULT_MAX_AGGREGATE_KEYS,
        producer_close_timeout: float = DEFAULT_PRODUCER_CLOSE_TIMEOUT_SECONDS,
        flag_writer_close_timeout: float = DEFAULT_FLAG_WRITER_CLOSE_TIMEOUT_SECONDS,
        flag_backoff: Backoff | None = None,
        dlq_topic: str | None = None,
        worker: str = "billing",
    ) -> None:
        if min(max_pending_outcomes, max_pending_batches, max_batch_messages) < 1:
            raise ValueError("pending and batch limits must be >= 1")
        if min(max_batch_outcomes, max_aggregate_keys) < 1:
            raise ValueError("batch limits must be >= 1")
        if aggregate_window_seconds is not None and aggregate_window_seconds <= 0:
            raise ValueError("aggregate_window_seconds must be positive (or None for off)")
        self.__producer_factory = producer_factory
        self.__dlq_topic = dlq_topic
        self.__worker = worker
        self.__on_dead_letter = metrics.dlq_message
        self.__producer: OutcomeProducer | None = None
        self.__topic = Topic(outcomes_topic)
        self.__counter = (
            BillingCounter() if billable_metrics is None else BillingCounter(billable_metrics)
        )
        self.__encoder = OutcomeEncoder(clock_ns)
        self.__max_pending_outcomes = max_pending_outcomes
        self.__max_pending_batches = max_pending_batches
        self.__max_batch_messages = max_batch_messages
        self.__max_batch_outcomes = max_batch_outcomes
        self.__max_batch_seconds = max_batch_seconds
        self.__aggregate_window_seconds = aggregate_window_seconds
        self.__max_aggregate_keys = max_aggregate_keys
        self.__producer_close_timeout = producer_close_timeout
        self.__flag_writer_close_timeout = flag_writer_close_timeout
        self.billing_metrics = BillingMetrics(metrics.registry)
        self.tally = BillingTally(metrics, self.billing_metrics)
        self.__flag_writer: FlagWriter | None = None
        self.__detector: CustomMetricDetector | None = None
        if flag_store_factory is not None:
            billing_metrics = self.billing_metrics
            self.__flag_writer = FlagWriter(
                lambda: flag_store_factory(billing_metrics),
                metrics=billing_metrics,
                step=self.tally.flag_step,
                backoff=flag_backoff,
            )
            self.__detector = CustomMetricDetector()

    @property
    def outcomes_topic(self) -> Topic:
        return self.__topic

    @property
    def counter(self) -> BillingCounter:
        return self.__counter

    @property
    def aggregate_window_seconds(self) -> float | None:
        return self.__aggregate_window_seconds

    @property
    def flag_writer(self) -> FlagWriter | None:
        return self.__flag_writer

    def __get_producer(self) -> OutcomeProducer:
        if self.__producer is None:
            self.__producer = self.__producer_factory()
        return self.__producer

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[InputPayload]:
        writer = self.__flag_writer
        deliver = DeliverOutcomes(
            self.__get_producer(),
            self.__topic,
            CommitOffsets(commit),
            self.tally,
            flag_writer=writer,
            max_pending_outcomes=self.__max_pending_outcomes,
            max_pending_batches=self.__max_pending_batches,
            dlq_topic=self.__dlq_topic,
            worker=self.__worker,
            on_dead_letter=self.__on_dead_letter,
        )
        translate: ProcessingStrategy[Any] = TranslateOutcomes(
            deliver,
            self.__counter,
            self.__encoder,
            self.tally,
            detector=self.__detector,
            known_flagged=writer.known if writer is not None else frozenset(),
            max_batch_messages=self.__max_batch_messages,
            max_batch_outcomes=self.__max_batch_outcomes,
            max_batch_seconds=self.__max_batch_seconds,
            aggregate_window_seconds=self.__aggregate_window_seconds,
            max_aggregate_keys=self.__max_aggregate_keys,
        )
        return translate

    def shutdown(self) -> None:
        writer = self.__flag_writer
        if writer is not None:
            writer.close(self.__flag_writer_close_timeout)
        producer, self.__producer = self.__producer, None
        if producer is None:
            return
        left = producer.flush(self.__producer_close_timeout)
        if left:
            logger.warning(
                "outcomes producer did not flush within %.1f s",
                self.__producer_close_timeout,
                extra={"outcomes_left": left},
            )

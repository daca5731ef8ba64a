"""The billing worker's Arroyo chain: generic-metrics buckets in, accepted outcomes out.

    TranslateOutcomes   decode + validate + count + encode (or aggregate) + spot custom
                        metrics; closes one `OutcomeBatch` per N messages / T seconds
      → LimitDeadLetters counts the batch's invalid messages against the DLQ limits (when
                        any is set); beyond one, the worker stops before the batch goes on
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
from collections.abc import Callable, Mapping
from typing import Any, Final

from arroyo.processing.strategies import CommitOffsets
from arroyo.processing.strategies.abstract import (
    ProcessingStrategy,
    ProcessingStrategyFactory,
)
from arroyo.types import (
    Commit,
    Partition,
    Topic,
)
from confluent_kafka import KafkaException

from workers.billing.counting import BillingCounter
from workers.billing.custom_metrics import CustomMetricDetector
from workers.billing.deliver import (
    DEFAULT_MAX_PENDING_BATCHES,
    DEFAULT_MAX_PENDING_OUTCOMES,
    DeliverOutcomes,
)
from workers.billing.deliver_in_transactions import DeliverInTransactions
from workers.billing.flags import FlagStore, FlagWriter
from workers.billing.limit_dead_letters import LimitDeadLetters
from workers.billing.metrics import BillingMetrics
from workers.billing.outcome import ClockNs, OutcomeEncoder
from workers.billing.outcome_producer import OutcomeProducer
from workers.billing.rewind import RewindOnAbort
from workers.billing.tally import BillingTally, MetricsSource
from workers.billing.transactions import ExactlyOnce, TransactionalProducer
from workers.billing.translate import (
    DEFAULT_MAX_AGGREGATE_KEYS,
    DEFAULT_MAX_BATCH_MESSAGES,
    DEFAULT_MAX_BATCH_OUTCOMES,
    DEFAULT_MAX_BATCH_SECONDS,
    TranslateOutcomes,
)
from workers.common.backoff import Backoff
from workers.common.call_watchdog import CallWatchdog
from workers.common.dlq_limit import DlqLimiter
from workers.common.message_runs import MessageRun

logger = logging.getLogger(__name__)

DEFAULT_OUTCOMES_TOPIC: Final = "outcomes-billing"
OUTCOMES_CLIENT_ID: Final = "billing-outcomes"

#: How long `shutdown()` waits for the outcomes producer to flush.
DEFAULT_PRODUCER_CLOSE_TIMEOUT_SECONDS: Final = 10.0
DEFAULT_FLAG_WRITER_CLOSE_TIMEOUT_SECONDS: Final = 10.0


class BillingStrategyFactory(ProcessingStrategyFactory[MessageRun]):
    """Builds the billing chain on every assignment; owns the per-process resources.

    One outcomes producer and one flag writer per process, both built on the first
    assignment (building the factory connects to nothing); `shutdown()` stops the flag writer
    and flushes the producer. `flag_store_factory=None` disables the first-custom-metric flag.
    """

    def __init__(
        self,
        *,
        producer_factory: Callable[[], OutcomeProducer] | None = None,
        metrics: MetricsSource,
        exactly_once: ExactlyOnce | None = None,
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
        dlq_limiter: DlqLimiter | None = None,
        worker: str = "billing",
    ) -> None:
        if (producer_factory is None) == (exactly_once is None):
            raise ValueError("give producer_factory (at-least-once) or exactly_once, not both")
        if min(max_pending_outcomes, max_pending_batches, max_batch_messages) < 1:
            raise ValueError("pending and batch limits must be >= 1")
        if min(max_batch_outcomes, max_aggregate_keys) < 1:
            raise ValueError("batch limits must be >= 1")
        if aggregate_window_seconds is not None and aggregate_window_seconds <= 0:
            raise ValueError("aggregate_window_seconds must be positive (or None for off)")
        self.__producer_factory = producer_factory
        self.__exactly_once = exactly_once
        self.__transactional_producer: TransactionalProducer | None = None
        self.__watchdog = CallWatchdog()
        self.__dlq_topic = dlq_topic
        self.__dlq_limiter = dlq_limiter
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

    @property
    def exactly_once(self) -> bool:
        return self.__exactly_once is not None

    def __get_producer(self) -> OutcomeProducer:
        if self.__producer is None:
            assert self.__producer_factory is not None
            self.__producer = self.__producer_factory()
        return self.__producer

    def __get_transactional_producer(self, mode: ExactlyOnce) -> TransactionalProducer:
        if self.__transactional_producer is None:
            producer = mode.producer_factory()
            # Fences any earlier producer with this transactional id and aborts what it left
            # open, so the offsets of its partitions can be read.
            with self.__watchdog.guard("init_transactions", mode.init_timeout_seconds):
                producer.init_transactions(mode.init_timeout_seconds)
            self.__transactional_producer = self.__producer = producer
        return self.__transactional_producer

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[MessageRun]:
        mode = self.__exactly_once
        if mode is None:
            self.__reset_dlq_limits(partitions)
            return self.__translate(self.__at_least_once(commit))
        producer = self.__get_transactional_producer(mode)
        committed = dict(partitions)

        def build_chain() -> ProcessingStrategy[Any]:
            # Also after an abort: the partitions are read again from `committed`.
            self.__reset_dlq_limits(committed)
            return self.__translate(
                DeliverInTransactions(
                    producer,
                    self.__topic,
                    mode.consumer,
                    committed,
                    self.tally,
                    flag_writer=self.__flag_writer,
                    transaction_interval_seconds=mode.transaction_interval_seconds,
                    max_transaction_messages=self.__max_pending_outcomes,
                    max_waiting_batches=self.__max_pending_batches,
                    dlq_topic=self.__dlq_topic,
                    worker=self.__worker,
                    on_dead_letter=self.__on_dead_letter,
                    watchdog=self.__watchdog,
                    note_committed=mode.note_committed,
                )
            )

        rewind: ProcessingStrategy[Any] = RewindOnAbort(build_chain, mode.consumer, committed)
        return rewind

    def __at_least_once(self, commit: Commit) -> ProcessingStrategy[Any]:
        writer = self.__flag_writer
        return DeliverOutcomes(
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

    def __reset_dlq_limits(self, partitions: Mapping[Partition, int]) -> None:
        if self.__dlq_limiter is not None:
            self.__dlq_limiter.reset(partitions)

    def __translate(self, deliver: ProcessingStrategy[Any]) -> ProcessingStrategy[Any]:
        writer = self.__flag_writer
        limiter = self.__dlq_limiter
        return TranslateOutcomes(
            deliver if limiter is None else LimitDeadLetters(limiter, deliver),
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

    def shutdown(self) -> None:
        writer = self.__flag_writer
        if writer is not None:
            writer.close(self.__flag_writer_close_timeout)
        producer, self.__producer = self.__producer, None
        if producer is None:
            return
        try:
            left = producer.flush(self.__producer_close_timeout)
        except KafkaException as error:
            # A fenced or otherwise failed transactional producer: nothing is left to deliver
            # outside a transaction, and the error that ended the process was logged already.
            logger.warning("outcomes producer failed at shutdown", extra={"error": str(error)})
            return
        if left:
            logger.warning(
                "outcomes producer did not flush within %.1f s",
                self.__producer_close_timeout,
                extra={"outcomes_left": left},
            )

"""`TranslateOutcomes`: decode, count and encode a run of buckets into `OutcomeBatch`es."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Container, Sequence
from typing import Any, Final

from arroyo.processing.strategies.abstract import (
    MessageRejected,
    ProcessingStrategy,
)
from arroyo.types import (
    BrokerValue,
    Message,
    Partition,
    Value,
)

from workers.billing.batch import DeadLetter, OutcomeBatch, remaining
from workers.billing.counting import BillingCounter, billable_quantity
from workers.billing.custom_metrics import CustomMetricDetector
from workers.billing.flags import ProjectKey
from workers.billing.message import METRIC_TYPES, BucketError, parse_bucket
from workers.billing.outcome import OutcomeEncoder
from workers.billing.tally import LATENCY_SAMPLE_EVERY, BillingTally
from workers.common.message_runs import MessageRun, RawMessage

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_MESSAGES: Final = 5_000
DEFAULT_MAX_BATCH_OUTCOMES: Final = 1_000
DEFAULT_MAX_BATCH_SECONDS: Final = 0.02
#: An aggregation window also closes when it holds this many distinct keys.
DEFAULT_MAX_AGGREGATE_KEYS: Final = 10_000

_SAMPLE_SHIFT: Final = LATENCY_SAMPLE_EVERY.bit_length() - 1
_JOIN_POLL_SECONDS: Final = 0.005


class TranslateOutcomes(ProcessingStrategy[MessageRun]):
    """Decodes each bucket of a run, counts it, and closes the outcomes as batches.

    Input is one `MessageRun` per partition and fetch (`RunConsumer`). An invalid message
    becomes a `DeadLetter` of the current batch with a reason `"<code>: <detail>"`; the next
    step copies it to the DLQ topic before the batch's offsets are released, so its offset
    is committed past once the batch is done.

    `MessageRejected` is raised only before a message is touched (while a closed batch still
    waits for the next step), so a resubmitted message is never counted twice. A run may
    close several batches; they wait in order for the next step.
    """

    def __init__(
        self,
        next_step: ProcessingStrategy[OutcomeBatch],
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
        # metric type -> use case -> decoded buckets of the open batch (`tally.count_types`).
        self.__by_type: dict[str, dict[str, int]] = {name: {} for name in METRIC_TYPES}
        self.__carried: deque[Message[OutcomeBatch]] = deque()
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

    def submit(self, message: Message[MessageRun]) -> None:
        assert not self.__closed
        if self.__carried and not self.__forward_carried():
            raise MessageRejected()
        value = message.value
        assert isinstance(value, BrokerValue)
        partition = value.partition
        index = partition.index
        if index not in self.__partitions:
            self.__partitions[index] = partition
        messages = value.payload.messages
        start = 0
        while True:
            if self.__messages == 0:
                self.__deadline = time.monotonic() + self.__max_seconds
            end = self.__translate(messages, start, partition)
            offset = messages[end - 1].offset()
            assert offset is not None
            self.__offsets[index] = offset + 1
            if end == len(messages):
                break
            # The batch filled up inside the run: its offsets end at message `end - 1`.
            self.__close_batch()
            start = end
        self.__maybe_close()

    def __translate(self, messages: Sequence[RawMessage], start: int, partition: Partition) -> int:
        """Decode, count and encode `messages[start:]` until the batch is full.

        Returns the position after the last message taken (at least one is). An invalid
        message becomes a `DeadLetter` of `partition`. The hot path: what it touches per
        message is a local, and the batch's counts are written back once.
        """
        tally = self.__tally
        by_type = self.__by_type
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
        dead_letters = self.__dead_letters
        dead_before = len(dead_letters)
        started = time.perf_counter()
        taken = 0
        try:
            for raw in messages[start:stop] if start or stop < len(messages) else messages:
                taken += 1
                try:
                    org_id, project_id, metric_id, metric_type, _, use_case, counter, meta = (
                        parse_bucket(raw.value() or b"")
                    )
                except BucketError as error:
                    tally.invalid(error.code)
                    dead_letters.append(DeadLetter(raw, partition, error.reason))
                    continue
                by_use_case = by_type[metric_type]
                by_use_case[use_case] = by_use_case.get(use_case, 0) + 1
                if meta and is_custom is not None and is_custom(meta, metric_id):
                    project = (org_id, project_id)
                    if project in known:
                        tally.process_cache_hits += 1
                    else:
                        candidates.add(project)
                if counter is None:
                    continue
                category = categories.get(metric_id)
                if category is None:
                    continue
                quantity = billable_quantity(counter)
                if not quantity:
                    continue
                entry = stats.get(category)
                if entry is None:
                    stats[category] = [1, quantity]
                else:
                    entry[0] += 1
                    entry[1] += quantity
                if aggregating:
                    key = (org_id, project_id, category)
                    sums[key] = sums.get(key, 0) + quantity
                    if len(sums) >= max_outcomes:
                        break
                else:
                    payloads.append({"value": encode(org_id, project_id, category, quantity)})
                    if len(payloads) >= max_outcomes:
                        break
        finally:
            self.__messages += taken
            tally.decoded += taken - (len(dead_letters) - dead_before)
            seen = self.__seen
            self.__seen = seen + taken
        if (seen + taken) >> _SAMPLE_SHIFT != seen >> _SAMPLE_SHIFT:
            # About one observation per LATENCY_SAMPLE_EVERY messages: the mean of this call.
            tally.observe_decode_latency((time.perf_counter() - started) / taken)
        return start + taken

    def __maybe_close(self) -> None:
        if (
            self.__messages >= self.__max_messages
            or len(self.__payloads) >= self.__max_outcomes
            or len(self.__sums) >= self.__max_outcomes
        ):
            self.__close_batch()

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
        tally.count_types(self.__by_type)
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
        self.__next_step.join(remaining(deadline))
        self.__tally.flush()

"""Fakes and helpers for the billing chain's tests: buckets, runs, a producer, a commit log.

The chain only ever receives runs (`MessageRun`, as `RunConsumer` hands them out), so every
test feeds it runs: `run(values, first_offset, partition)`, or `OneMessageRuns` around a
`LocalBroker` consumer for a `StreamProcessor`.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
from arroyo.backends.abstract import Consumer
from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.local.backend import LocalBroker
from arroyo.backends.local.storages.memory import MemoryMessageStorage
from arroyo.processing.strategies.abstract import ProcessingStrategy
from arroyo.types import BrokerValue, Message, Partition, Topic
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError
from sentry_kafka_schemas import get_codec

from workers.billing.batch import OutcomeBatch
from workers.billing.counting import (
    DEFAULT_BILLABLE_METRICS,
    TRANSACTIONS_USAGE_METRIC_ID,
    BillingCounter,
    billable_quantity,
)
from workers.billing.custom_metrics import CustomMetricDetector
from workers.billing.factory import BillingStrategyFactory
from workers.billing.flags import FlagCheck, FlagStore, ProjectKey
from workers.billing.message import BucketError, parse_bucket
from workers.billing.metrics import BillingMetrics
from workers.billing.outcome import ClockNs, OutcomeEncoder
from workers.billing.tally import BillingTally
from workers.billing.translate import TranslateOutcomes
from workers.common.backoff import Backoff
from workers.common.message_runs import Headers, MessageRun
from workers.common.metrics import FleetMetrics

INPUT = Topic("snuba-generic-metrics")
OUTPUT = Topic("outcomes-billing")
DLQ = Topic("snuba-generic-metrics-dlq")
NOW_NS = 1_704_614_940 * 10**9
CUSTOM_METRIC_ID = 9223372036854776500

DeliveryCallback = Callable[[Any, Any], None]


# -- input -----------------------------------------------------------------------------------


def bucket(value: Any = 7.0, metric_id: int = TRANSACTIONS_USAGE_METRIC_ID, **extra: Any) -> bytes:
    data: dict[str, Any] = {
        "org_id": 1,
        "project_id": 3,
        "metric_id": metric_id,
        "type": "c",
        "value": value,
        "timestamp": 1704614940,
        "use_case_id": "transactions",
        "mapping_meta": {},
        "tags": {},
        "retention_days": 90,
    }
    data.update(extra)
    return orjson.dumps(data)


def custom_bucket(org_id: int, project_id: int, mri: str = "c:custom/clicks@none") -> bytes:
    return bucket(
        1.0,
        metric_id=CUSTOM_METRIC_ID,
        org_id=org_id,
        project_id=project_id,
        use_case_id="custom",
        mapping_meta={"c": {str(CUSTOM_METRIC_ID): mri}, "h": {"5": "environment"}},
    )


BILLABLE = bucket(7.0)
NOT_BILLABLE = bucket(5.0, metric_id=65563)
INVALID = b"{not json"


class RawMessage:
    """The part of a confluent-kafka message a run carries."""

    __slots__ = ("_headers", "_key", "_offset", "_value")

    def __init__(
        self,
        value: bytes | None,
        offset: int,
        headers: Headers | None = None,
        key: bytes | None = None,
    ) -> None:
        self._value = value
        self._offset = offset
        self._headers = headers
        self._key = key

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> Headers | None:
        return self._headers

    def offset(self) -> int:
        return self._offset


def run(values: Sequence[bytes], first_offset: int, partition: int = 0) -> Message[MessageRun]:
    """`values` as one run of `partition`, the first at `first_offset`."""
    raws = [RawMessage(value, first_offset + i) for i, value in enumerate(values)]
    return Message(
        BrokerValue(
            MessageRun(raws), Partition(INPUT, partition), raws[-1].offset(), datetime.now()
        )
    )


class LocalRuns(Consumer[MessageRun]):
    """A consumer (e.g. a `LocalBroker`'s) whose messages are handed out as runs of up to
    `run_length` consecutive messages of one partition (what `RunConsumer` does with a fetch)."""

    def __init__(self, inner: Consumer[KafkaPayload], run_length: int = 1) -> None:
        self.__inner = inner
        self.__run_length = run_length
        self.__held: BrokerValue[KafkaPayload] | None = None  # the next run's first message

    def poll(self, timeout: float | None = None) -> BrokerValue[MessageRun] | None:
        first, self.__held = self.__held or self.__inner.poll(timeout), None
        if first is None:
            return None
        values = [first]
        while len(values) < self.__run_length:
            value = self.__inner.poll(0)
            if value is None:
                break
            if value.partition != first.partition:
                self.__held = value
                break
            values.append(value)
        raws = [
            RawMessage(v.payload.value, v.offset, list(v.payload.headers), v.payload.key)
            for v in values
        ]
        last = values[-1]
        return BrokerValue(MessageRun(raws), first.partition, last.offset, last.timestamp)

    def subscribe(
        self,
        topics: Sequence[Topic],
        on_assign: Callable[[Mapping[Partition, int]], None] | None = None,
        on_revoke: Callable[[Sequence[Partition]], None] | None = None,
    ) -> None:
        self.__inner.subscribe(topics, on_assign=on_assign, on_revoke=on_revoke)

    def unsubscribe(self) -> None:
        self.__inner.unsubscribe()

    def pause(self, partitions: Sequence[Partition]) -> None:
        self.__inner.pause(partitions)

    def resume(self, partitions: Sequence[Partition]) -> None:
        self.__inner.resume(partitions)

    def paused(self) -> Sequence[Partition]:
        return self.__inner.paused()

    def tell(self) -> Mapping[Partition, int]:
        return self.__inner.tell()

    def seek(self, offsets: Mapping[Partition, int]) -> None:
        self.__held = None
        self.__inner.seek(offsets)

    def stage_offsets(self, offsets: Mapping[Partition, int]) -> None:
        self.__inner.stage_offsets(offsets)

    def commit_offsets(self) -> Mapping[Partition, int] | None:
        return self.__inner.commit_offsets()

    def close(self, timeout: float | None = None) -> None:
        self.__inner.close(timeout)

    @property
    def closed(self) -> bool:
        return self.__inner.closed

    @property
    def member_id(self) -> str:
        return self.__inner.member_id


def expected_outcome(raw: bytes) -> tuple[int, int, int, int] | None:
    """(org, project, category, quantity) the default map and `billable_quantity` give `raw`.

    An oracle for the tests of the chain's plumbing (delivery, commits, aggregation); the
    rule itself is tested through `TranslateOutcomes` in test_billing_counting.py.
    """
    try:
        parsed = parse_bucket(raw)
    except BucketError:
        return None
    category = DEFAULT_BILLABLE_METRICS.get(parsed.metric_id)
    if category is None or parsed.counter is None:
        return None
    quantity = billable_quantity(parsed.counter)
    if not quantity:
        return None
    return (parsed.org_id, parsed.project_id, category, quantity)


# -- TranslateOutcomes on its own --------------------------------------------------------------


class CollectBatches(ProcessingStrategy[OutcomeBatch]):
    """A next step that keeps every batch it is handed."""

    def __init__(self) -> None:
        self.batches: list[OutcomeBatch] = []

    def submit(self, message: Message[OutcomeBatch]) -> None:
        self.batches.append(message.payload)

    def poll(self) -> None:
        pass

    def close(self) -> None:
        pass

    def terminate(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass


class Translator:
    """The shipped `TranslateOutcomes`, one batch per run: what it makes of some messages."""

    def __init__(
        self,
        categories: Mapping[int, int] = DEFAULT_BILLABLE_METRICS,
        clock_ns: ClockNs = lambda: NOW_NS,
    ) -> None:
        registry = CollectorRegistry()
        self.collected = CollectBatches()
        self.tally = BillingTally(FleetMetrics(registry, "billing"), BillingMetrics(registry))
        self.strategy = TranslateOutcomes(
            self.collected,
            BillingCounter(categories),
            OutcomeEncoder(clock_ns),
            self.tally,
            detector=CustomMetricDetector(),
            max_batch_messages=10**9,
            max_batch_outcomes=10**9,
            max_batch_seconds=0.0,
        )
        self.next_offset = 0

    def batch(self, values: Sequence[bytes]) -> OutcomeBatch:
        """`values` as one run, closed as one batch (its deadline is now: `poll` closes it)."""
        before = len(self.collected.batches)
        self.strategy.submit(run(values, self.next_offset))
        self.next_offset += len(values)
        self.strategy.poll()
        [batch] = self.collected.batches[before:]
        return batch


def decoded_outcomes(batch: OutcomeBatch) -> list[dict[str, Any]]:
    # The stdlib parser keeps integers beyond 64 bits exact (orjson would not).
    return [json.loads(payload["value"]) for payload in batch.payloads]


# -- the producer, the commit callback, the flag store --------------------------------------


class FakeDelivered:
    """What a delivery callback receives as its message."""

    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value


class FakeProducer:
    """confluent-kafka's producer surface, delivering onto a LocalBroker topic.

    With `auto=True` every queued outcome is delivered on the next `poll`; otherwise the test
    decides with `deliver`/`fail`. Reports are served (callbacks called) only from `poll` and
    `flush`, as librdkafka does. `queue_limit` makes `produce_batch` refuse what does not fit.
    """

    def __init__(
        self,
        broker: LocalBroker[KafkaPayload],
        auto: bool = True,
        queue_limit: int = 10**9,
        order: random.Random | None = None,
        on_deliver: Callable[[str, bytes], None] | None = None,
    ) -> None:
        self.broker = broker
        self.auto = auto
        self.queue_limit = queue_limit
        self.order = order
        self.on_deliver = on_deliver
        self.pending: list[tuple[DeliveryCallback, str, bytes, Headers]] = []
        self.reports: list[tuple[DeliveryCallback, KafkaError | None, bytes]] = []
        self.flushed = False
        self.batches = 0
        self.polls = 0

    def queued(self) -> int:
        return len(self.pending) + len(self.reports)

    def produce_batch(
        self,
        topic: str,
        messages: list[dict[str, Any]],
        partition: int = -1,
        callback: DeliveryCallback | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> int:
        assert on_delivery is not None
        self.batches += 1
        queued = 0
        for item in messages:
            if self.queued() >= self.queue_limit:
                item["_error"] = KafkaError(KafkaError._QUEUE_FULL)
                continue
            self.pending.append((on_delivery, topic, item["value"], []))
            queued += 1
        return queued

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: Any = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        assert on_delivery is not None
        assert value is not None
        if self.queued() >= self.queue_limit:
            raise BufferError("queue full")
        self.pending.append((on_delivery, topic, value, list(headers or [])))

    def deliver(self, index: int = 0) -> bytes:
        callback, topic, value, headers = self.pending.pop(index)
        if self.on_deliver is not None:
            self.on_deliver(topic, value)
        self.broker.produce(Partition(Topic(topic), 0), KafkaPayload(None, value, list(headers)))
        self.reports.append((callback, None, value))
        return value

    def fail(self, index: int = 0, code: int = KafkaError.MSG_SIZE_TOO_LARGE) -> bytes:
        callback, _, value, _ = self.pending.pop(index)
        self.reports.append((callback, KafkaError(code), value))
        return value

    def poll(self, timeout: float = -1) -> int:
        self.polls += 1
        if self.auto:
            while self.pending:
                self.deliver(self.order.randrange(len(self.pending)) if self.order else 0)
        reports, self.reports = self.reports, []
        for callback, error, value in reports:
            callback(error, FakeDelivered(value))
        return len(reports)

    def flush(self, timeout: float = -1) -> int:
        self.flushed = True
        while self.pending:
            self.deliver()
        self.poll(0)
        return 0


class CommitLog:
    """The chain's commit callback: what it committed, never going backwards."""

    def __init__(self) -> None:
        self.calls: list[dict[Partition, int]] = []
        self.committed: dict[Partition, int] = {}

    def __call__(self, offsets: Mapping[Partition, int], force: bool = False) -> None:
        if offsets:
            for partition, offset in offsets.items():
                assert offset >= self.committed.get(partition, 0), "commit went backwards"
            self.calls.append(dict(offsets))
            self.committed.update(offsets)

    def at(self, partition: int = 0) -> int | None:
        return self.committed.get(Partition(INPUT, partition))


class GatedFlagStore:
    """A flag store whose rounds wait for the test (`gate`) and may fail first."""

    def __init__(self, existing: Collection[ProjectKey], failures: int = 0) -> None:
        self.existing = set(existing)
        self.flagged: set[ProjectKey] = set()
        self.calls: list[set[ProjectKey]] = []
        self.failures = failures
        self.gate = threading.Event()
        self.gate.set()
        self.closed = False

    def check_and_flag(self, candidates: Collection[ProjectKey]) -> FlagCheck:
        self.gate.wait(10)
        self.calls.append(set(candidates))
        if self.failures:
            self.failures -= 1
            raise RedisConnectionError("redis is down")
        check = FlagCheck()
        for key in candidates:
            if key not in self.existing:
                check.missing.add(key)
            elif key in self.flagged:
                check.already_flagged.add(key)
            else:
                self.flagged.add(key)
                check.flagged.add(key)
        return check

    def close(self) -> None:
        self.closed = True


# -- the chain ---------------------------------------------------------------------------------


def make_broker() -> LocalBroker[KafkaPayload]:
    broker: LocalBroker[KafkaPayload] = LocalBroker(MemoryMessageStorage())
    broker.create_topic(INPUT, 2)
    broker.create_topic(OUTPUT, 1)
    broker.create_topic(DLQ, 1)
    return broker


def make_factory(
    producer: FakeProducer,
    registry: CollectorRegistry,
    store: FlagStore | None = None,
    **kwargs: Any,
) -> BillingStrategyFactory:
    """The chain's factory over `producer`; one batch per run unless told otherwise."""
    kwargs.setdefault("max_batch_messages", 1)
    kwargs.setdefault("max_batch_seconds", 0.0)
    return BillingStrategyFactory(
        producer_factory=lambda: producer,
        metrics=FleetMetrics(registry, "billing"),
        flag_store_factory=(lambda _metrics: store) if store is not None else None,
        outcomes_topic=OUTPUT.name,
        clock_ns=lambda: NOW_NS,
        flag_backoff=Backoff(0.001, 0.01),
        **kwargs,
    )


def outcomes(broker: LocalBroker[KafkaPayload]) -> list[dict[str, Any]]:
    """Every outcome on the output topic, each checked against the schema and keyless."""
    found = []
    offset = 0
    while (value := broker.consume(Partition(OUTPUT, 0), offset)) is not None:
        assert value.payload.key is None
        get_codec("outcomes").decode(value.payload.value, validate=True)
        found.append(orjson.loads(value.payload.value))
        offset += 1
    return found


def dlq_messages(broker: LocalBroker[KafkaPayload]) -> list[KafkaPayload]:
    found = []
    offset = 0
    while (value := broker.consume(Partition(DLQ, 0), offset)) is not None:
        found.append(value.payload)
        offset += 1
    return found


def settle(strategy: ProcessingStrategy[Any], until: Callable[[], bool]) -> None:
    """Poll until `until()` holds (the chain checks deliveries every few ms); 5 s at most."""
    deadline = time.monotonic() + 5.0
    while not until():
        assert time.monotonic() < deadline, "the chain made no progress"
        strategy.poll()
        time.sleep(0.001)


def poll_for(strategy: ProcessingStrategy[Any], seconds: float = 0.03) -> None:
    """Poll for several of the chain's check intervals (5 ms), so every periodic check ran."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        strategy.poll()
        time.sleep(0.001)

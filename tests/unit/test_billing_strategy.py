"""The billing chain: outcomes produced, commits only after acknowledgement, DLQ, shutdown."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from datetime import datetime
from typing import Any

import orjson
import pytest
from arroyo.backends.abstract import Producer, ProducerFuture
from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.local.backend import LocalBroker
from arroyo.backends.local.storages.memory import MemoryMessageStorage
from arroyo.commit import IMMEDIATE
from arroyo.dlq import DlqPolicy, InvalidMessage, KafkaDlqProducer
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies.abstract import MessageRejected, ProcessingStrategy
from arroyo.types import BrokerValue, Message, Partition, Topic
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from sentry_kafka_schemas import get_codec

from workers.billing.counting import (
    SPANS_USAGE_METRIC_ID,
    TRANSACTIONS_USAGE_METRIC_ID,
    BillingCounter,
)
from workers.billing.message import BucketError, parse_bucket
from workers.billing.strategy import BillingStrategyFactory
from workers.billing.traffic import sample_traffic
from workers.common.metrics import FleetMetrics

INPUT = Topic("snuba-generic-metrics")
OUTPUT = Topic("outcomes-billing")
DLQ = Topic("snuba-generic-metrics-dlq")
NOW_NS = 1_704_614_940 * 10**9


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


BILLABLE = bucket(7.0)
NOT_BILLABLE = bucket(5.0, metric_id=65563)
INVALID = b"{not json"


def message(raw: bytes, offset: int, partition: int = 0) -> Message[KafkaPayload]:
    return Message(
        BrokerValue(
            KafkaPayload(None, raw, []), Partition(INPUT, partition), offset, datetime.now()
        )
    )


class ManualProducer(Producer[KafkaPayload]):
    """Delivery futures resolved by the test, onto a LocalBroker topic."""

    def __init__(self, broker: LocalBroker[KafkaPayload]) -> None:
        self.broker = broker
        self.pending: list[tuple[Future[BrokerValue[KafkaPayload]], Topic, KafkaPayload]] = []
        self.closed = False
        self.lock = threading.Lock()

    def produce(
        self, destination: Topic | Partition, payload: KafkaPayload
    ) -> ProducerFuture[BrokerValue[KafkaPayload]]:
        assert isinstance(destination, Topic)
        future: Future[BrokerValue[KafkaPayload]] = Future()
        future.set_running_or_notify_cancel()
        with self.lock:
            self.pending.append((future, destination, payload))
        return future

    def deliver(self, index: int = 0) -> None:
        with self.lock:
            future, topic, payload = self.pending.pop(index)
        future.set_result(self.broker.produce(Partition(topic, 0), payload))

    def deliver_all(self) -> None:
        while self.pending:
            self.deliver()

    def fail(self, index: int = 0) -> None:
        future, _, _ = self.pending.pop(index)
        future.set_exception(RuntimeError("broker said no"))

    def close(self) -> Future[None]:
        self.closed = True
        done: Future[None] = Future()
        done.set_result(None)
        return done


class CommitLog:
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


@pytest.fixture
def broker() -> LocalBroker[KafkaPayload]:
    broker: LocalBroker[KafkaPayload] = LocalBroker(MemoryMessageStorage())
    broker.create_topic(INPUT, 2)
    broker.create_topic(OUTPUT, 1)
    broker.create_topic(DLQ, 1)
    return broker


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def make_factory(
    producer: Producer[KafkaPayload], registry: CollectorRegistry, **kwargs: Any
) -> BillingStrategyFactory:
    kwargs.setdefault("commit_batch_messages", 1)
    kwargs.setdefault("commit_batch_seconds", 0.0)
    return BillingStrategyFactory(
        producer_factory=lambda: producer,
        metrics=FleetMetrics(registry, "billing"),
        outcomes_topic=OUTPUT.name,
        clock_ns=lambda: NOW_NS,
        **kwargs,
    )


def outcomes(broker: LocalBroker[KafkaPayload]) -> list[dict[str, Any]]:
    found = []
    offset = 0
    while (value := broker.consume(Partition(OUTPUT, 0), offset)) is not None:
        assert value.payload.key is None
        get_codec("outcomes").decode(value.payload.value, validate=True)
        found.append(orjson.loads(value.payload.value))
        offset += 1
    return found


def poll(strategy: ProcessingStrategy[KafkaPayload], times: int = 3) -> None:
    for _ in range(times):
        strategy.poll()


def test_commit_waits_for_every_earlier_outcome(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = ManualProducer(broker)
    commits = CommitLog()
    strategy = make_factory(producer, registry).create_with_partitions(commits, {})

    strategy.submit(message(BILLABLE, 0))
    strategy.submit(message(NOT_BILLABLE, 1))
    strategy.submit(message(bucket(3.0, metric_id=SPANS_USAGE_METRIC_ID), 2))
    strategy.submit(message(NOT_BILLABLE, 3))
    poll(strategy)
    assert len(producer.pending) == 2
    assert commits.at() is None  # nothing acknowledged yet

    producer.deliver(1)  # the *second* outcome is acknowledged first
    poll(strategy)
    assert commits.at() is None  # offset 0's outcome is still in flight

    producer.deliver(0)
    poll(strategy)
    assert commits.at() == 4
    assert [o["quantity"] for o in outcomes(broker)] == [3, 7]
    assert {o["category"] for o in outcomes(broker)} == {2, 12}

    strategy.close()
    strategy.join(1.0)


def test_outcome_bytes_on_the_topic(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    commits = CommitLog()
    factory = make_factory(broker.get_producer(), registry)
    strategy = factory.create_with_partitions(commits, {})
    strategy.submit(message(BILLABLE, 0))
    poll(strategy)
    strategy.close()
    strategy.join(1.0)
    value = broker.consume(Partition(OUTPUT, 0), 0)
    assert value is not None
    assert value.payload.key is None
    assert value.payload.value == (
        b'{"timestamp":"2024-01-07T08:09:00.000000Z","org_id":1,"project_id":3,"key_id":null,'
        b'"outcome":0,"reason":null,"event_id":null,"category":2,"quantity":7}'
    )
    assert commits.at() == 1


def test_failed_delivery_raises_and_is_never_committed_past(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = ManualProducer(broker)
    commits = CommitLog()
    strategy = make_factory(producer, registry).create_with_partitions(commits, {})
    for offset in range(3):
        strategy.submit(message(BILLABLE, offset))
    producer.deliver(0)
    poll(strategy)
    assert commits.at() == 1

    producer.fail(0)  # offset 1's outcome fails
    producer.deliver(0)  # offset 2's outcome succeeds
    with pytest.raises(RuntimeError, match="broker said no"):
        strategy.poll()
    # The failure is sticky: it is raised again and nothing behind it is released.
    with pytest.raises(RuntimeError, match="broker said no"):
        strategy.poll()
    assert commits.at() == 1
    strategy.terminate()
    assert commits.at() == 1


def test_backpressure_and_resubmission(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = ManualProducer(broker)
    commits = CommitLog()
    factory = make_factory(producer, registry, max_pending_outcomes=2)
    strategy = factory.create_with_partitions(commits, {})
    strategy.submit(message(BILLABLE, 0))
    strategy.submit(message(BILLABLE, 1))
    third = message(bucket(9.0), 2)
    with pytest.raises(MessageRejected):
        strategy.submit(third)
    with pytest.raises(MessageRejected):
        strategy.submit(Message(third.value))  # the processor resubmits the same value
    assert len(producer.pending) == 2

    producer.deliver_all()
    strategy.poll()
    strategy.submit(Message(third.value))
    producer.deliver_all()
    poll(strategy)
    assert [o["quantity"] for o in outcomes(broker)] == [7, 7, 9]
    assert commits.at() == 3
    strategy.close()
    strategy.join(1.0)
    assert factory.tally.quantity_by_category == {2: 23}
    assert factory.tally.outcomes_by_category == {2: 3}


def test_invalid_message_raises_invalid_message_and_is_committed_past(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = ManualProducer(broker)
    commits = CommitLog()
    strategy = make_factory(producer, registry).create_with_partitions(commits, {})
    strategy.submit(message(BILLABLE, 0))
    with pytest.raises(InvalidMessage) as info:
        strategy.submit(message(INVALID, 1))
    assert info.value.partition == Partition(INPUT, 0)
    assert info.value.offset == 1
    assert info.value.reason == "invalid_json: payload is not valid JSON"
    poll(strategy)
    assert commits.at() is None  # offset 0's outcome is still pending
    producer.deliver_all()
    poll(strategy)
    assert commits.at() == 2
    strategy.close()
    strategy.join(1.0)
    invalid = registry.get_sample_value(
        "workers_step_messages_invalid_total",
        {"worker": "billing", "step": "decode", "reason": "invalid_json"},
    )
    assert invalid == 1.0


def test_join_waits_for_in_flight_outcomes(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = ManualProducer(broker)
    commits = CommitLog()
    factory = make_factory(producer, registry, commit_batch_messages=1000, commit_batch_seconds=60)
    strategy = factory.create_with_partitions(commits, {})
    for offset in range(5):
        strategy.submit(message(BILLABLE if offset % 2 else NOT_BILLABLE, offset))
    strategy.submit(message(NOT_BILLABLE, 0, partition=1))
    strategy.poll()

    timer = threading.Timer(0.1, producer.deliver_all)
    timer.start()
    started = time.monotonic()
    strategy.close()
    strategy.join(5.0)
    timer.join()
    assert 0.05 < time.monotonic() - started < 4.0
    assert commits.at(0) == 5
    assert commits.at(1) == 1
    assert len(outcomes(broker)) == 2


def test_join_timeout_leaves_undelivered_offsets_uncommitted(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = ManualProducer(broker)
    commits = CommitLog()
    strategy = make_factory(producer, registry).create_with_partitions(commits, {})
    strategy.submit(message(NOT_BILLABLE, 0))
    strategy.submit(message(BILLABLE, 1))
    strategy.submit(message(NOT_BILLABLE, 2))
    strategy.close()
    strategy.join(0.05)
    assert commits.at() == 1  # up to the undelivered outcome, never past it


def test_metrics_are_flushed_per_step(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    strategy = make_factory(broker.get_producer(), registry).create_with_partitions(CommitLog(), {})
    for offset, raw in enumerate([BILLABLE, NOT_BILLABLE, BILLABLE, bucket([1.0])]):
        strategy.submit(message(raw, offset))
    with pytest.raises(InvalidMessage):
        strategy.submit(message(bucket("x"), 4))
    poll(strategy)
    strategy.close()
    strategy.join(1.0)

    def sample(name: str, step: str) -> float | None:
        return registry.get_sample_value(name, {"worker": "billing", "step": step})

    assert sample("workers_step_messages_in_total", "decode") == 5
    assert sample("workers_step_messages_out_total", "decode") == 4
    assert sample("workers_step_messages_in_total", "count") == 4
    assert sample("workers_step_messages_out_total", "count") == 2
    assert sample("workers_step_messages_in_total", "produce") == 2
    assert sample("workers_step_messages_out_total", "produce") == 2
    assert (
        registry.get_sample_value(
            "workers_step_messages_invalid_total",
            {"worker": "billing", "step": "decode", "reason": "non_numeric_counter"},
        )
        == 1
    )


KINDS = st.sampled_from(["billable", "filtered", "invalid"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), KINDS), min_size=1, max_size=30),
    st.randoms(use_true_random=False),
    st.integers(1, 4),
)
def test_commits_never_pass_an_unacknowledged_outcome(
    plan: list[tuple[int, str]], rng: Any, batch: int
) -> None:
    broker: LocalBroker[KafkaPayload] = LocalBroker(MemoryMessageStorage())
    broker.create_topic(OUTPUT, 1)
    producer = ManualProducer(broker)
    undelivered: dict[int, set[int]] = {0: set(), 1: set()}  # partition -> offsets
    payload_offsets: dict[bytes, tuple[int, int]] = {}

    class CheckingCommit(CommitLog):
        def __call__(self, offsets: Mapping[Partition, int], force: bool = False) -> None:
            for partition, offset in offsets.items():
                pending = undelivered[partition.index]
                assert all(o >= offset for o in pending), (offsets, pending)
            super().__call__(offsets, force)

    commits = CheckingCommit()
    strategy = make_factory(
        producer,
        CollectorRegistry(),
        commit_batch_messages=batch,
        commit_batch_seconds=0.0 if batch % 2 else 60.0,
    ).create_with_partitions(commits, {})
    next_offset = {0: 0, 1: 0}
    for partition, kind in plan:
        offset = next_offset[partition]
        next_offset[partition] += 1
        if kind == "billable":
            raw = bucket(float(offset + 1), org_id=partition, project_id=offset)
            payload_offsets[raw] = (partition, offset)
            undelivered[partition].add(offset)
            strategy.submit(message(raw, offset, partition))
        elif kind == "filtered":
            strategy.submit(message(NOT_BILLABLE, offset, partition))
        else:
            with pytest.raises(InvalidMessage):
                strategy.submit(message(INVALID, offset, partition))
        if producer.pending and rng.random() < 0.5:
            index = rng.randrange(len(producer.pending))
            raw_out = producer.pending[index][2].value
            decoded = orjson.loads(raw_out)
            undelivered[decoded["org_id"]].discard(decoded["project_id"])
            producer.deliver(index)
        strategy.poll()

    while producer.pending:
        index = rng.randrange(len(producer.pending))
        decoded = orjson.loads(producer.pending[index][2].value)
        undelivered[decoded["org_id"]].discard(decoded["project_id"])
        producer.deliver(index)
        strategy.poll()
    strategy.close()
    strategy.join(1.0)
    for partition, count in next_offset.items():
        if count:
            assert commits.at(partition) == count


def _run_processor(
    processor: StreamProcessor[KafkaPayload], until: Any, limit: float = 10.0
) -> None:
    deadline = time.monotonic() + limit
    while not until():
        assert time.monotonic() < deadline, "processor made no progress"
        processor._run_once()


def test_stream_processor_end_to_end_with_dlq(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    traffic = sample_traffic(600, 7)
    for index, payload in enumerate(traffic):
        broker.produce(Partition(INPUT, index % 2), payload)

    # Validation is tested on its own; here the parser is the oracle for the chain.
    expected_quantity = 0
    expected_invalid = 0
    for payload in traffic:
        try:
            parsed = parse_bucket(payload.value)
        except BucketError:
            expected_invalid += 1
            continue
        outcome = BillingCounter().count(parsed)
        expected_quantity += outcome.quantity if outcome is not None else 0
    assert 0 < expected_invalid < 30

    factory = BillingStrategyFactory(
        producer_factory=broker.get_producer,
        metrics=FleetMetrics(registry, "billing"),
        outcomes_topic=OUTPUT.name,
    )
    dlq_policy = DlqPolicy(KafkaDlqProducer(broker.get_producer(), DLQ), None, None)
    consumer = broker.get_consumer("billing-metrics-consumer")
    processor = StreamProcessor(
        consumer, INPUT, factory, commit_policy=IMMEDIATE, dlq_policy=dlq_policy
    )

    def consumed() -> bool:
        return sum(consumer.tell().values()) >= len(traffic) if consumer.tell() else False

    _run_processor(processor, consumed)
    for _ in range(50):
        processor._run_once()
    processor.signal_shutdown()
    processor.run()

    found = outcomes(broker)
    assert sum(o["quantity"] for o in found) == expected_quantity
    assert all(o["quantity"] >= 1 for o in found)
    assert {o["category"] for o in found} == {2, 12}

    dlq: list[BrokerValue[KafkaPayload]] = []
    while (value := broker.consume(Partition(DLQ, 0), len(dlq))) is not None:
        dlq.append(value)
    assert len(dlq) == expected_invalid

    # Every input offset is committed after a clean shutdown.
    check = broker.get_consumer("billing-metrics-consumer")
    assigned: dict[Partition, int] = {}
    check.subscribe([INPUT], on_assign=assigned.update)
    check.poll(0)
    assert assigned == {Partition(INPUT, 0): 300, Partition(INPUT, 1): 300}
    check.close()


def test_factory_is_lazy_and_shutdown_closes_the_producer(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = ManualProducer(broker)
    built: list[ManualProducer] = []

    def build() -> ManualProducer:
        built.append(producer)
        return producer

    factory = BillingStrategyFactory(
        producer_factory=build, metrics=FleetMetrics(registry, "billing")
    )
    assert built == []
    factory.shutdown()  # nothing to close yet
    for _ in range(2):  # one producer across rebalances
        strategy = factory.create_with_partitions(CommitLog(), {})
        strategy.close()
        strategy.join(0.1)
    assert len(built) == 1
    assert factory.outcomes_topic == Topic("outcomes-billing")
    factory.shutdown()
    assert producer.closed


class FailingProducer(Producer[KafkaPayload]):
    """Produces to the LocalBroker, except that delivery number `fail_at` fails."""

    def __init__(self, broker: LocalBroker[KafkaPayload], fail_at: int) -> None:
        self.inner = broker.get_producer()
        self.fail_at = fail_at
        self.produced = 0
        self.closed = False

    def produce(
        self, destination: Topic | Partition, payload: KafkaPayload
    ) -> ProducerFuture[BrokerValue[KafkaPayload]]:
        self.produced += 1
        if self.produced == self.fail_at:
            failed: Future[BrokerValue[KafkaPayload]] = Future()
            failed.set_exception(RuntimeError("message timed out"))
            return failed
        return self.inner.produce(destination, payload)

    def close(self) -> Future[None]:
        self.closed = True
        return self.inner.close()


def test_stream_processor_crashes_on_a_failed_delivery_without_committing_past_it(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    for offset in range(10):
        broker.produce(Partition(INPUT, 0), KafkaPayload(None, bucket(float(offset + 1)), []))
    producer = FailingProducer(broker, fail_at=4)  # the outcome of offset 3
    factory = make_factory(producer, registry)
    consumer = broker.get_consumer("billing-metrics-consumer")
    processor = StreamProcessor(consumer, INPUT, factory, commit_policy=IMMEDIATE)
    safety = threading.Timer(10.0, processor.signal_shutdown)  # only if it never crashes
    safety.start()
    try:
        # `run()` terminates the chain, closes the consumer and shuts the factory down.
        with pytest.raises(RuntimeError, match="message timed out"):
            processor.run()
    finally:
        safety.cancel()
    assert producer.closed

    check = broker.get_consumer("billing-metrics-consumer")
    assigned: dict[Partition, int] = {}
    check.subscribe([INPUT], on_assign=assigned.update)
    check.poll(0)
    check.close()
    # Offsets 0-2 were acknowledged and may be committed; offset 3 failed: never past it.
    assert assigned[Partition(INPUT, 0)] <= 3
    assert [o["quantity"] for o in outcomes(broker)][:3] == [1, 2, 3]

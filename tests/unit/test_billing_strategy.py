"""The billing chain: outcomes produced, commits only after acknowledgement, DLQ, shutdown."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any

import orjson
import pytest
from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.local.backend import LocalBroker
from arroyo.backends.local.storages.memory import MemoryMessageStorage
from arroyo.commit import IMMEDIATE
from arroyo.dlq import DlqPolicy, InvalidMessage, KafkaDlqProducer
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies.abstract import MessageRejected, ProcessingStrategy
from arroyo.types import BrokerValue, Message, Partition, Topic
from confluent_kafka import KafkaError
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from sentry_kafka_schemas import get_codec

from workers.billing.backoff import Backoff
from workers.billing.counting import (
    SPANS_USAGE_METRIC_ID,
    TRANSACTIONS_USAGE_METRIC_ID,
    BillingCounter,
)
from workers.billing.factory import BillingStrategyFactory
from workers.billing.flags import FlagCheck, FlagStore, ProjectKey
from workers.billing.message import BucketError, parse_bucket
from workers.billing.metrics import LATENCY_SAMPLE_EVERY, BillingMetrics
from workers.billing.outcome_producer import OutcomeDeliveryError
from workers.billing.traffic import sample_traffic
from workers.common.message_runs import MessageRun
from workers.common.metrics import FleetMetrics

Headers = list[tuple[str, bytes]]
INPUT = Topic("snuba-generic-metrics")
OUTPUT = Topic("outcomes-billing")
DLQ = Topic("snuba-generic-metrics-dlq")
NOW_NS = 1_704_614_940 * 10**9
CUSTOM_METRIC_ID = 9223372036854776500


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


def message(raw: bytes, offset: int, partition: int = 0) -> Message[KafkaPayload]:
    return Message(
        BrokerValue(
            KafkaPayload(None, raw, []), Partition(INPUT, partition), offset, datetime.now()
        )
    )


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
        on_deliver: Callable[[bytes], None] | None = None,
    ) -> None:
        self.broker = broker
        self.auto = auto
        self.queue_limit = queue_limit
        self.order = order
        self.on_deliver = on_deliver
        self.pending: list[tuple[Callable[[Any, Any], None], str, bytes, Headers]] = []
        self.reports: list[tuple[Callable[[Any, Any], None], KafkaError | None, bytes]] = []
        self.flushed = False
        self.batches = 0

    def produce_batch(
        self,
        topic: str,
        messages: list[dict[str, Any]],
        partition: int = -1,
        callback: Callable[[Any, Any], None] | None = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> int:
        assert on_delivery is not None
        self.batches += 1
        queued = 0
        for item in messages:
            if len(self) >= self.queue_limit:
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
        on_delivery: Callable[[Any, Any], None] | None = None,
    ) -> None:
        assert on_delivery is not None
        assert value is not None
        if len(self) >= self.queue_limit:
            raise BufferError("queue full")
        self.pending.append((on_delivery, topic, value, list(headers or [])))

    def deliver(self, index: int = 0) -> bytes:
        callback, topic, value, headers = self.pending.pop(index)
        if self.on_deliver is not None:
            self.on_deliver(value)
        self.broker.produce(Partition(Topic(topic), 0), KafkaPayload(None, value, headers))
        self.reports.append((callback, None, value))
        return value

    def fail(self, index: int = 0, code: int = KafkaError.MSG_SIZE_TOO_LARGE) -> bytes:
        callback, _, value, _ = self.pending.pop(index)
        self.reports.append((callback, KafkaError(code), value))
        return value

    def poll(self, timeout: float = -1) -> int:
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

    def __len__(self) -> int:
        return len(self.pending) + len(self.reports)


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


class GatedFlagStore:
    """A flag store whose rounds wait for the test (`release`) and may fail first."""

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
            from redis.exceptions import ConnectionError as RedisConnectionError

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
    producer: FakeProducer,
    registry: CollectorRegistry,
    store: FlagStore | None = None,
    **kwargs: Any,
) -> BillingStrategyFactory:
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
    found = []
    offset = 0
    while (value := broker.consume(Partition(OUTPUT, 0), offset)) is not None:
        assert value.payload.key is None
        get_codec("outcomes").decode(value.payload.value, validate=True)
        found.append(orjson.loads(value.payload.value))
        offset += 1
    return found


def settle(strategy: ProcessingStrategy[KafkaPayload], until: Callable[[], bool]) -> None:
    """Poll until `until()` holds (the chain checks deliveries every few ms); 5 s at most."""
    deadline = time.monotonic() + 5.0
    while not until():
        assert time.monotonic() < deadline, "the chain made no progress"
        strategy.poll()
        time.sleep(0.001)


def poll_for(strategy: ProcessingStrategy[KafkaPayload], seconds: float = 0.03) -> None:
    """Poll for a while: enough for the chain's periodic checks to run several times."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        strategy.poll()
        time.sleep(0.001)


def test_commit_waits_for_every_earlier_outcome(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    strategy = make_factory(producer, registry).create_with_partitions(commits, {})

    strategy.submit(message(BILLABLE, 0))
    strategy.submit(message(NOT_BILLABLE, 1))
    strategy.submit(message(bucket(3.0, metric_id=SPANS_USAGE_METRIC_ID), 2))
    strategy.submit(message(NOT_BILLABLE, 3))
    poll_for(strategy)
    assert len(producer.pending) == 2
    assert commits.at() is None  # nothing acknowledged yet

    producer.deliver(1)  # the *second* outcome is acknowledged first
    poll_for(strategy)
    assert commits.at() is None  # offset 0's outcome is still in flight

    producer.deliver(0)
    settle(strategy, lambda: commits.at() == 4)
    assert [o["quantity"] for o in outcomes(broker)] == [3, 7]
    assert {o["category"] for o in outcomes(broker)} == {2, 12}

    strategy.close()
    strategy.join(1.0)


def test_partitions_are_released_independently(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    strategy = make_factory(producer, registry).create_with_partitions(commits, {})
    strategy.submit(message(BILLABLE, 0, partition=0))
    strategy.submit(message(bucket(2.0), 0, partition=1))
    producer.deliver(1)  # partition 1's outcome
    settle(strategy, lambda: commits.at(1) == 1)
    assert commits.at(0) is None
    producer.deliver(0)
    settle(strategy, lambda: commits.at(0) == 1)


def test_outcome_bytes_on_the_topic(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    commits = CommitLog()
    factory = make_factory(FakeProducer(broker), registry)
    strategy = factory.create_with_partitions(commits, {})
    strategy.submit(message(BILLABLE, 0))
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


def test_refused_outcome_raises_and_is_never_committed_past(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    strategy = make_factory(producer, registry).create_with_partitions(commits, {})
    for offset in range(3):
        strategy.submit(message(bucket(float(offset + 1)), offset))
    producer.deliver(0)
    settle(strategy, lambda: commits.at() == 1)

    producer.fail(0)  # offset 1's outcome is refused for good
    producer.deliver(0)  # offset 2's outcome succeeds
    with pytest.raises(OutcomeDeliveryError, match="MSG_SIZE_TOO_LARGE"):
        settle(strategy, lambda: False)
    # The failure is sticky: it is raised again and nothing behind it is released.
    with pytest.raises(OutcomeDeliveryError):
        settle(strategy, lambda: False)
    assert commits.at() == 1
    strategy.terminate()
    assert commits.at() == 1


def test_retriable_delivery_error_is_produced_again_and_then_committed(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    strategy = make_factory(producer, registry).create_with_partitions(commits, {})
    strategy.submit(message(bucket(4.0), 0))
    strategy.submit(message(bucket(5.0), 1))
    producer.fail(0, KafkaError._MSG_TIMED_OUT)
    producer.deliver(0)
    settle(strategy, lambda: len(producer.pending) == 1)  # produced again
    assert commits.at() is None
    producer.deliver(0)
    settle(strategy, lambda: commits.at() == 2)
    assert sorted(o["quantity"] for o in outcomes(broker)) == [4, 5]
    retries = registry.get_sample_value(
        "workers_billing_produce_retries_total", {"worker": "billing", "error": "_MSG_TIMED_OUT"}
    )
    assert retries == 1.0
    strategy.close()
    strategy.join(1.0)


def test_a_full_producer_queue_is_retried_not_dropped(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False, queue_limit=2)
    commits = CommitLog()
    factory = make_factory(producer, registry, max_batch_messages=5, max_batch_seconds=60.0)
    strategy = factory.create_with_partitions(commits, {})
    for offset in range(5):
        strategy.submit(message(bucket(float(offset + 1)), offset))
    assert len(producer.pending) == 2  # three did not fit
    producer.auto = True
    settle(strategy, lambda: commits.at() == 5)
    assert sorted(o["quantity"] for o in outcomes(broker)) == [1, 2, 3, 4, 5]


def test_backpressure_rejects_before_touching_the_message(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    factory = make_factory(producer, registry, max_pending_outcomes=2)
    strategy = factory.create_with_partitions(commits, {})
    strategy.submit(message(BILLABLE, 0))
    strategy.submit(message(BILLABLE, 1))
    # The third closes a batch the next step cannot take yet: it is kept, not rejected...
    strategy.submit(message(bucket(9.0), 2))
    fourth = message(bucket(1.0), 3)
    # ...and the next message is rejected before it is looked at.
    with pytest.raises(MessageRejected):
        strategy.submit(fourth)
    with pytest.raises(MessageRejected):
        strategy.submit(Message(fourth.value))  # the processor resubmits the same value
    assert len(producer.pending) == 2

    producer.auto = True
    settle(strategy, lambda: len(producer.pending) == 0 and commits.at() == 3)
    strategy.submit(Message(fourth.value))
    settle(strategy, lambda: commits.at() == 4)
    assert [o["quantity"] for o in outcomes(broker)] == [7, 7, 9, 1]
    strategy.close()
    strategy.join(1.0)
    assert factory.tally.quantity_by_category == {2: 24}
    assert factory.tally.outcomes_by_category == {2: 4}


def test_invalid_message_raises_invalid_message_and_is_committed_past(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    strategy = make_factory(producer, registry, max_batch_messages=10).create_with_partitions(
        commits, {}
    )
    strategy.submit(message(BILLABLE, 0))
    with pytest.raises(InvalidMessage) as info:
        strategy.submit(message(INVALID, 1))
    assert info.value.partition == Partition(INPUT, 0)
    assert info.value.offset == 1
    assert info.value.reason == "invalid_json: payload is not valid JSON"
    poll_for(strategy)
    assert commits.at() is None  # offset 0's outcome is still pending
    producer.auto = True
    settle(strategy, lambda: commits.at() == 2)
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
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    factory = make_factory(producer, registry, max_batch_messages=1000, max_batch_seconds=60)
    strategy = factory.create_with_partitions(commits, {})
    for offset in range(5):
        strategy.submit(message(BILLABLE if offset % 2 else NOT_BILLABLE, offset))
    strategy.submit(message(NOT_BILLABLE, 0, partition=1))
    strategy.poll()

    delivered = threading.Event()

    def deliver_later() -> None:
        delivered.wait(5)
        producer.auto = True

    thread = threading.Thread(target=deliver_later)
    thread.start()
    timer = threading.Timer(0.1, delivered.set)
    timer.start()
    started = time.monotonic()
    strategy.close()
    strategy.join(5.0)
    thread.join()
    assert 0.05 < time.monotonic() - started < 4.0
    assert commits.at(0) == 5
    assert commits.at(1) == 1
    assert len(outcomes(broker)) == 2


def test_join_timeout_leaves_undelivered_offsets_uncommitted(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    strategy = make_factory(producer, registry).create_with_partitions(commits, {})
    strategy.submit(message(NOT_BILLABLE, 0))
    strategy.submit(message(BILLABLE, 1))
    strategy.submit(message(NOT_BILLABLE, 2))
    strategy.close()
    strategy.join(0.05)
    assert commits.at() == 1  # up to the undelivered outcome, never past it


def test_metrics_per_step_and_per_category(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    strategy = make_factory(FakeProducer(broker), registry).create_with_partitions(CommitLog(), {})
    raws = [
        BILLABLE,
        NOT_BILLABLE,
        bucket(2.5, metric_id=SPANS_USAGE_METRIC_ID, use_case_id="spans"),
        bucket([1.0]),
        bucket([1.0, 2.0], type="d", use_case_id="made-up-use-case"),
    ]
    for offset, raw in enumerate(raws):
        strategy.submit(message(raw, offset))
    with pytest.raises(InvalidMessage):
        strategy.submit(message(bucket("x"), len(raws)))
    strategy.close()
    strategy.join(1.0)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"worker": "billing", **labels})

    assert sample("workers_step_messages_in_total", step="decode") == 6
    assert sample("workers_step_messages_out_total", step="decode") == 5
    assert sample("workers_step_messages_in_total", step="count") == 5
    assert sample("workers_step_messages_out_total", step="count") == 2
    assert sample("workers_step_messages_in_total", step="produce") == 2
    assert sample("workers_step_messages_out_total", step="produce") == 2
    assert (
        sample("workers_step_messages_invalid_total", step="decode", reason="non_numeric_counter")
        == 1
    )
    assert sample("workers_billing_messages_total", type="c", use_case="transactions") == 3
    assert sample("workers_billing_messages_total", type="c", use_case="spans") == 1
    assert sample("workers_billing_messages_total", type="d", use_case="other") == 1
    assert sample("workers_billing_billable_buckets_total", category="transaction") == 1
    assert sample("workers_billing_outcomes_total", category="span") == 1
    assert sample("workers_billing_outcome_quantity_total", category="transaction") == 7
    assert sample("workers_billing_outcome_quantity_total", category="span") == 2
    assert sample("workers_billing_produce_latency_seconds_count") == 2


KINDS = st.sampled_from(["billable", "filtered", "invalid"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), KINDS), min_size=1, max_size=30),
    st.randoms(use_true_random=False),
    st.integers(1, 4),
    st.booleans(),
)
def test_commits_never_pass_an_unacknowledged_outcome(
    plan: list[tuple[int, str]], rng: Any, batch: int, aggregate: bool
) -> None:
    broker: LocalBroker[KafkaPayload] = LocalBroker(MemoryMessageStorage())
    broker.create_topic(OUTPUT, 1)
    producer = FakeProducer(broker, auto=False)
    # partition -> offsets whose outcome (or aggregate) is not acknowledged yet
    undelivered: dict[int, set[int]] = {0: set(), 1: set()}

    class CheckingCommit(CommitLog):
        def __call__(self, offsets: Mapping[Partition, int], force: bool = False) -> None:
            for partition, offset in offsets.items():
                pending = undelivered[partition.index]
                assert all(o >= offset for o in pending), (offsets, pending)
            super().__call__(offsets, force)

    def delivered(value: bytes) -> None:
        decoded = orjson.loads(value)
        undelivered[decoded["org_id"]].discard(decoded["project_id"])

    producer.on_deliver = delivered
    commits = CheckingCommit()
    strategy = make_factory(
        producer,
        CollectorRegistry(),
        max_batch_messages=batch,
        max_batch_seconds=0.0 if batch % 2 else 60.0,
        aggregate_window_seconds=60.0 if aggregate else None,
        max_aggregate_keys=batch,
    ).create_with_partitions(commits, {})
    # Every outcome names its input position: org = partition, project = offset.
    next_offset = {0: 0, 1: 0}
    for partition, kind in plan:
        offset = next_offset[partition]
        next_offset[partition] += 1
        if kind == "billable":
            raw = bucket(float(offset + 1), org_id=partition, project_id=offset)
            undelivered[partition].add(offset)
            strategy.submit(message(raw, offset, partition))
        elif kind == "filtered":
            strategy.submit(message(NOT_BILLABLE, offset, partition))
        else:
            with pytest.raises(InvalidMessage):
                strategy.submit(message(INVALID, offset, partition))
        if producer.pending and rng.random() < 0.5:
            producer.deliver(rng.randrange(len(producer.pending)))
        strategy.poll()

    # `join` closes the last batch (or window) and waits for the rest, delivered in a
    # random order.
    producer.order = random.Random(rng.randrange(2**32))
    producer.auto = True
    strategy.close()
    strategy.join(5.0)
    for partition, count in next_offset.items():
        if count:
            assert commits.at(partition) == count
    expected = sum(offset + 1 for (_, kind), offset in _positions(plan) if kind == "billable")
    assert sum(o["quantity"] for o in outcomes(broker)) == expected


def _positions(plan: list[tuple[int, str]]) -> list[tuple[tuple[int, str], int]]:
    next_offset = {0: 0, 1: 0}
    positions = []
    for partition, kind in plan:
        positions.append(((partition, kind), next_offset[partition]))
        next_offset[partition] += 1
    return positions


def test_aggregation_sums_per_project_and_category_with_identical_totals(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker)
    commits = CommitLog()
    factory = make_factory(
        producer, registry, max_batch_messages=10_000, aggregate_window_seconds=60.0
    )
    strategy = factory.create_with_partitions(commits, {})
    traffic = sample_traffic(3000, 11)
    expected: dict[tuple[int, int, int], int] = {}
    billable = 0
    for offset, payload in enumerate(traffic):
        try:
            strategy.submit(message(payload.value, offset))
        except InvalidMessage:
            continue
        outcome = BillingCounter().count(parse_bucket(payload.value))
        if outcome is not None:
            billable += 1
            key = (outcome.org_id, outcome.project_id, outcome.category)
            expected[key] = expected.get(key, 0) + outcome.quantity
    poll_for(strategy)
    assert producer.batches == 0  # the window is still open: nothing produced, nothing committed
    assert commits.at() is None
    strategy.close()
    strategy.join(1.0)
    found = outcomes(broker)
    assert len(found) == len(expected) < billable / 50
    assert {(o["org_id"], o["project_id"], o["category"]): o["quantity"] for o in found} == expected
    assert commits.at() == len(traffic)


def test_aggregation_window_closes_on_time(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    commits = CommitLog()
    factory = make_factory(
        FakeProducer(broker), registry, max_batch_messages=10_000, aggregate_window_seconds=0.05
    )
    strategy = factory.create_with_partitions(commits, {})
    for offset in range(10):
        strategy.submit(message(bucket(2.0), offset))
    settle(strategy, lambda: commits.at() == 10)
    assert [o["quantity"] for o in outcomes(broker)] == [20]
    strategy.submit(message(bucket(3.0), 10))
    settle(strategy, lambda: commits.at() == 11)
    assert [o["quantity"] for o in outcomes(broker)] == [20, 3]


def test_custom_metric_offsets_wait_for_the_flag_work(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    store = GatedFlagStore(existing={(1, 10), (1, 11)})
    store.gate.clear()
    commits = CommitLog()
    factory = make_factory(FakeProducer(broker), registry, store, max_batch_messages=3)
    strategy = factory.create_with_partitions(commits, {})
    strategy.submit(message(custom_bucket(1, 10), 0))
    strategy.submit(message(custom_bucket(1, 99), 1))  # no such project
    strategy.submit(message(BILLABLE, 2))
    poll_for(strategy, 0.05)
    assert commits.at() is None  # the outcome is acknowledged, the flag work is not done
    store.gate.set()
    settle(strategy, lambda: commits.at() == 3)
    assert store.flagged == {(1, 10)}

    # Known now: a later custom bucket for the project is a process-cache hit.
    strategy.submit(message(custom_bucket(1, 10), 3))
    strategy.submit(message(custom_bucket(1, 11, "d:custom/latency@millisecond"), 4))
    strategy.submit(message(custom_bucket(1, 11, "c:transactions/usage@none"), 5))
    settle(strategy, lambda: commits.at() == 6)
    strategy.close()
    strategy.join(1.0)
    factory.shutdown()
    assert store.flagged == {(1, 10), (1, 11)}
    assert store.closed

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"worker": "billing", **labels})

    assert sample("workers_billing_custom_metric_checks_total", result="process_cache") == 1
    assert sample("workers_billing_custom_metric_checks_total", result="flagged") == 2
    assert sample("workers_billing_custom_metric_checks_total", result="missing_project") == 1
    assert sample("workers_step_messages_out_total", step="flag") == 3


def test_flag_errors_are_retried_and_hold_the_offsets(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    store = GatedFlagStore(existing={(2, 20)}, failures=3)
    commits = CommitLog()
    factory = make_factory(FakeProducer(broker), registry, store)
    strategy = factory.create_with_partitions(commits, {})
    strategy.submit(message(custom_bucket(2, 20), 0))
    settle(strategy, lambda: commits.at() == 1)
    assert len(store.calls) == 4
    assert store.flagged == {(2, 20)}
    assert (
        registry.get_sample_value(
            "workers_billing_flag_errors_total", {"worker": "billing", "store": "redis"}
        )
        == 3
    )
    strategy.close()
    strategy.join(1.0)
    factory.shutdown()


def _run_processor(
    processor: StreamProcessor[KafkaPayload], until: Callable[[], bool], limit: float = 10.0
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

    producer = FakeProducer(broker)
    factory = BillingStrategyFactory(
        producer_factory=lambda: producer,
        metrics=FleetMetrics(registry, "billing"),
        outcomes_topic=OUTPUT.name,
        max_batch_messages=50,
    )
    dlq_policy = DlqPolicy(KafkaDlqProducer(broker.get_producer(), DLQ), None, None)
    consumer = broker.get_consumer("billing-metrics-consumer")
    processor = StreamProcessor(
        consumer, INPUT, factory, commit_policy=IMMEDIATE, dlq_policy=dlq_policy
    )

    def consumed() -> bool:
        return sum(consumer.tell().values()) >= len(traffic) if consumer.tell() else False

    _run_processor(processor, consumed)
    processor.signal_shutdown()
    processor.run()
    assert producer.flushed

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


def test_factory_is_lazy_and_shutdown_flushes_the_producer(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker)
    built: list[FakeProducer] = []

    def build() -> FakeProducer:
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
    assert producer.flushed


def test_stream_processor_crashes_on_a_refused_outcome_without_committing_past_it(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    for offset in range(10):
        broker.produce(Partition(INPUT, 0), KafkaPayload(None, bucket(float(offset + 1)), []))

    class RefusingProducer(FakeProducer):
        """Delivers everything except the fourth outcome, which is refused for good."""

        def poll(self, timeout: float = -1) -> int:
            while self.pending:
                if orjson.loads(self.pending[0][2])["quantity"] == 4:
                    self.fail(0)
                else:
                    self.deliver(0)
            return super().poll(timeout)

    producer = RefusingProducer(broker)
    factory = make_factory(producer, registry)
    consumer = broker.get_consumer("billing-metrics-consumer")
    processor = StreamProcessor(consumer, INPUT, factory, commit_policy=IMMEDIATE)
    safety = threading.Timer(10.0, processor.signal_shutdown)  # only if it never crashes
    safety.start()
    try:
        # `run()` terminates the chain, closes the consumer and shuts the factory down.
        with pytest.raises(OutcomeDeliveryError):
            processor.run()
    finally:
        safety.cancel()
    assert producer.flushed

    check = broker.get_consumer("billing-metrics-consumer")
    assigned: dict[Partition, int] = {}
    check.subscribe([INPUT], on_assign=assigned.update)
    check.poll(0)
    check.close()
    # Offsets 0-2 were acknowledged and may be committed; offset 3 failed: never past it.
    assert assigned[Partition(INPUT, 0)] <= 3
    assert [o["quantity"] for o in outcomes(broker)][:3] == [1, 2, 3]


def test_billing_metrics_are_registered_once_per_registry(registry: CollectorRegistry) -> None:
    BillingMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        BillingMetrics(registry)


def test_a_producer_raising_buffer_error_is_retried_not_dropped(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    class RaisingOnce(FakeProducer):
        raised = False

        def produce_batch(
            self,
            topic: str,
            messages: list[dict[str, Any]],
            partition: int = -1,
            callback: Callable[[Any, Any], None] | None = None,
            on_delivery: Callable[[Any, Any], None] | None = None,
        ) -> int:
            if not self.raised:
                self.raised = True
                raise BufferError("queue full")
            return super().produce_batch(topic, messages, partition, callback, on_delivery)

    commits = CommitLog()
    strategy = make_factory(RaisingOnce(broker), registry).create_with_partitions(commits, {})
    strategy.submit(message(bucket(6.0), 0))
    settle(strategy, lambda: commits.at() == 1)
    assert [o["quantity"] for o in outcomes(broker)] == [6]


# -- runs (what `RunConsumer` hands the chain) ----------------------------------------------


class RawMessage:
    """The part of a confluent-kafka message a run carries."""

    def __init__(self, value: bytes, offset: int, headers: Headers | None = None) -> None:
        self._value = value
        self._offset = offset
        self._headers = headers

    def key(self) -> bytes | None:
        return b"k"

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> Headers | None:
        return self._headers

    def offset(self) -> int | None:
        return self._offset


def run(values: list[bytes], first_offset: int, partition: int = 0) -> Message[MessageRun]:
    raws = [RawMessage(value, first_offset + i) for i, value in enumerate(values)]
    return Message(
        BrokerValue(MessageRun(raws), Partition(INPUT, partition), raws[-1]._offset, datetime.now())
    )


def dlq_messages(broker: LocalBroker[KafkaPayload]) -> list[KafkaPayload]:
    found = []
    offset = 0
    while (value := broker.consume(Partition(DLQ, 0), offset)) is not None:
        found.append(value.payload)
        offset += 1
    return found


def test_a_run_dead_letters_its_invalid_messages_and_commits_after_their_delivery(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    factory = make_factory(producer, registry, max_batch_messages=100, dlq_topic=DLQ.name)
    strategy = factory.create_with_partitions(commits, {})

    strategy.submit(run([BILLABLE, INVALID, NOT_BILLABLE, BILLABLE], 10))
    poll_for(strategy)
    assert commits.at() is None
    assert len(producer.pending) == 3  # two outcomes and one DLQ copy

    dlq_index = next(i for i, entry in enumerate(producer.pending) if entry[1] == DLQ.name)
    producer.deliver(dlq_index)
    producer.deliver(0)
    poll_for(strategy)
    assert commits.at() is None  # one outcome still unacknowledged
    producer.deliver(0)
    settle(strategy, lambda: commits.at() == 14)

    [copy] = dlq_messages(broker)
    assert copy.value == INVALID
    headers = dict(copy.headers)
    assert headers["reason"] == b"invalid_json: payload is not valid JSON"
    assert headers["original_offset"] == b"11"
    assert headers["original_partition"] == b"0"
    assert headers["original_topic"] == INPUT.name.encode()
    assert len(outcomes(broker)) == 2
    dlq_total = registry.get_sample_value(
        "workers_dlq_messages_total", {"worker": "billing", "reason": "invalid_json"}
    )
    assert dlq_total == 1.0


def test_a_failed_dead_letter_is_produced_again_before_the_commit(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    factory = make_factory(producer, registry, max_batch_messages=100, dlq_topic=DLQ.name)
    strategy = factory.create_with_partitions(commits, {})
    strategy.submit(run([INVALID], 0))
    poll_for(strategy)
    producer.fail(0, KafkaError._MSG_TIMED_OUT)
    poll_for(strategy)
    assert commits.at() is None
    producer.auto = True
    settle(strategy, lambda: commits.at() == 1)
    assert [copy.value for copy in dlq_messages(broker)] == [INVALID]


def test_a_run_longer_than_a_batch_commits_batch_by_batch_with_exact_totals(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    factory = make_factory(producer, registry, max_batch_messages=4, max_batch_seconds=60)
    strategy = factory.create_with_partitions(commits, {})
    values = [bucket(float(i + 1)) for i in range(10)]
    strategy.submit(run(values, 100))
    # Two full batches closed inside the run; the last two messages wait for the deadline.
    poll_for(strategy)
    assert len(producer.pending) == 8
    for _ in range(4):
        producer.deliver(0)
    settle(strategy, lambda: commits.at() == 104)
    producer.auto = True
    settle(strategy, lambda: commits.at() == 108)
    strategy.close()
    strategy.join(1.0)
    assert commits.at() == 110
    assert sorted(item["quantity"] for item in outcomes(broker)) == list(range(1, 11))


@pytest.mark.parametrize(
    "limit", [{"max_batch_outcomes": 3}, {"aggregate_window_seconds": 60, "max_aggregate_keys": 3}]
)
def test_a_batch_full_of_outcomes_closes_inside_a_run(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry, limit: dict[str, Any]
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    factory = make_factory(
        producer, registry, max_batch_messages=1000, max_batch_seconds=60, **limit
    )
    strategy = factory.create_with_partitions(commits, {})
    # Billable buckets of distinct projects between non-billable ones: every third billable
    # bucket fills the batch, which ends at that message.
    values = [
        bucket(2.0, project_id=index) if index % 2 == 0 else bucket(0.5, project_id=index)
        for index in range(14)
    ]
    strategy.submit(run(values, 100))
    # Two full batches closed inside the run; the last billable bucket waits for the deadline.
    poll_for(strategy)
    assert len(producer.pending) == 6
    for _ in range(3):
        producer.deliver(0)
    settle(strategy, lambda: commits.at() == 105)
    producer.auto = True
    settle(strategy, lambda: commits.at() == 111)
    strategy.close()
    strategy.join(1.0)
    assert commits.at() == 114
    assert sorted(item["project_id"] for item in outcomes(broker)) == list(range(0, 14, 2))


def test_without_a_dlq_topic_invalid_messages_of_a_run_are_skipped_and_committed_past(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker)
    commits = CommitLog()
    strategy = make_factory(producer, registry).create_with_partitions(commits, {})
    strategy.submit(run([INVALID, BILLABLE], 0))
    settle(strategy, lambda: commits.at() == 2)
    assert dlq_messages(broker) == []
    assert len(outcomes(broker)) == 1


def test_backpressure_on_a_run_rejects_before_touching_it(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    factory = make_factory(
        producer, registry, max_batch_messages=2, max_pending_batches=1, max_batch_seconds=60
    )
    strategy = factory.create_with_partitions(commits, {})
    # Five batches close inside the run; the next step takes one, the rest wait in order.
    strategy.submit(run([BILLABLE] * 10, 0))
    with pytest.raises(MessageRejected):
        strategy.submit(run([BILLABLE], 10))
    producer.auto = True
    settle(strategy, lambda: commits.at() == 10)
    strategy.submit(run([BILLABLE], 10))
    strategy.close()
    strategy.join(1.0)
    assert commits.at() == 11
    assert len(outcomes(broker)) == 11


@pytest.mark.parametrize(("runs", "per_run"), [(10, 100), (600, 1)])
def test_decode_latency_is_observed_about_once_per_256_messages(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry, runs: int, per_run: int
) -> None:
    factory = make_factory(
        FakeProducer(broker), registry, max_batch_messages=5000, max_batch_seconds=60
    )
    strategy = factory.create_with_partitions(CommitLog(), {})
    for index in range(runs):
        strategy.submit(run([bucket([1.0])] * per_run, index * per_run))
    strategy.close()
    strategy.join(1.0)
    observed = registry.get_sample_value(
        "workers_step_latency_seconds_count", {"worker": "billing", "step": "decode"}
    )
    # One observation each time the message count passes a multiple of 256.
    assert observed == (runs * per_run) // LATENCY_SAMPLE_EVERY
    total = registry.get_sample_value(
        "workers_step_latency_seconds_sum", {"worker": "billing", "step": "decode"}
    )
    assert total is not None
    assert total > 0

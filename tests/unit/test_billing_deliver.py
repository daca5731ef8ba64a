"""`DeliverOutcomes`: outcomes produced, offsets released only after acknowledgement, in order."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import pytest
from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.local.backend import LocalBroker
from arroyo.types import Partition
from confluent_kafka import KafkaError
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from tests.support.billing_fakes import (
    BILLABLE,
    DLQ,
    NOT_BILLABLE,
    OUTPUT,
    CommitLog,
    FakeProducer,
    GatedFlagStore,
    bucket,
    custom_bucket,
    make_broker,
    make_factory,
    outcomes,
    poll_for,
    run,
    settle,
)
from workers.billing.counting import SPANS_USAGE_METRIC_ID
from workers.billing.outcome_producer import OutcomeDeliveryError


def test_commit_waits_for_every_earlier_outcome(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    strategy = make_factory(producer, registry).create_with_partitions(commits, {})

    # One batch per message: four batches out of one run.
    spans = bucket(3.0, metric_id=SPANS_USAGE_METRIC_ID)
    strategy.submit(run([BILLABLE, NOT_BILLABLE, spans, NOT_BILLABLE], 0))
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
    strategy.submit(run([BILLABLE], 0, partition=0))
    strategy.submit(run([bucket(2.0)], 0, partition=1))
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
    strategy.submit(run([BILLABLE], 0))
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
    strategy.submit(run([bucket(1.0), bucket(2.0), bucket(3.0)], 0))
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
    strategy.submit(run([bucket(4.0), bucket(5.0)], 0))
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
    strategy.submit(run([bucket(float(offset + 1)) for offset in range(5)], 0))
    assert len(producer.pending) == 2  # three did not fit
    producer.auto = True
    settle(strategy, lambda: commits.at() == 5)
    assert sorted(o["quantity"] for o in outcomes(broker)) == [1, 2, 3, 4, 5]


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
    strategy.submit(run([bucket(6.0)], 0))
    settle(strategy, lambda: commits.at() == 1)
    assert [o["quantity"] for o in outcomes(broker)] == [6]


def test_join_waits_for_in_flight_outcomes(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    class DeliversOnTheThirdPoll(FakeProducer):
        def poll(self, timeout: float = -1) -> int:
            self.auto = self.polls >= 2
            return super().poll(timeout)

    producer = DeliversOnTheThirdPoll(broker, auto=False)
    commits = CommitLog()
    factory = make_factory(producer, registry, max_batch_messages=1000, max_batch_seconds=60)
    strategy = factory.create_with_partitions(commits, {})
    strategy.submit(run([NOT_BILLABLE, BILLABLE, NOT_BILLABLE, BILLABLE, NOT_BILLABLE], 0))
    strategy.submit(run([NOT_BILLABLE], 0, partition=1))
    assert producer.polls == 0  # the batch is still open: nothing produced, nothing polled
    strategy.close()
    strategy.join(5.0)
    assert producer.polls >= 3  # join polled until the outcomes were acknowledged
    assert commits.at(0) == 5
    assert commits.at(1) == 1
    assert len(outcomes(broker)) == 2


def test_join_timeout_leaves_undelivered_offsets_uncommitted(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    strategy = make_factory(producer, registry).create_with_partitions(commits, {})
    strategy.submit(run([NOT_BILLABLE, BILLABLE, NOT_BILLABLE], 0))
    strategy.close()
    strategy.join(0.05)
    assert commits.at() == 1  # up to the undelivered outcome, never past it
    assert len(producer.pending) == 1


def test_custom_metric_offsets_wait_for_the_flag_work(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    store = GatedFlagStore(existing={(1, 10), (1, 11)})
    store.gate.clear()
    commits = CommitLog()
    factory = make_factory(FakeProducer(broker), registry, store, max_batch_messages=3)
    strategy = factory.create_with_partitions(commits, {})
    # (1, 99): no such project.
    strategy.submit(run([custom_bucket(1, 10), custom_bucket(1, 99), BILLABLE], 0))
    poll_for(strategy, 0.05)
    assert len(outcomes(broker)) == 1
    assert commits.at() is None  # the outcome is acknowledged, the flag work is not done
    store.gate.set()
    settle(strategy, lambda: commits.at() == 3)
    assert store.flagged == {(1, 10)}

    # Known now: a later custom bucket for the project is a process-cache hit.
    strategy.submit(
        run(
            [
                custom_bucket(1, 10),
                custom_bucket(1, 11, "d:custom/latency@millisecond"),
                custom_bucket(1, 11, "c:transactions/usage@none"),
            ],
            3,
        )
    )
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
    strategy.submit(run([custom_bucket(2, 20)], 0))
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


KINDS = st.sampled_from(["billable", "filtered", "invalid"])
RUNS = st.lists(
    st.tuples(st.integers(0, 1), st.lists(KINDS, min_size=1, max_size=5)), min_size=1, max_size=12
)


@settings(max_examples=60, deadline=None)
@given(RUNS, st.randoms(use_true_random=False), st.integers(1, 4), st.booleans())
def test_commits_never_pass_an_unacknowledged_outcome_or_dead_letter(
    plan: list[tuple[int, list[str]]], rng: Any, batch: int, aggregate: bool
) -> None:
    broker = make_broker()
    producer = FakeProducer(broker, auto=False)
    # partition -> offsets whose outcome (or aggregate, or DLQ copy) is not acknowledged yet
    undelivered: dict[int, set[int]] = {0: set(), 1: set()}

    class CheckingCommit(CommitLog):
        def __call__(self, offsets: Mapping[Partition, int], force: bool = False) -> None:
            for partition, offset in offsets.items():
                pending = undelivered[partition.index]
                assert all(o >= offset for o in pending), (offsets, pending)
            super().__call__(offsets, force)

    def delivered(topic: str, value: bytes) -> None:
        if topic == DLQ.name:
            partition, offset = value.removeprefix(b"{invalid ").split(b":")
            undelivered[int(partition)].discard(int(offset))
        else:
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
        dlq_topic=DLQ.name,
    ).create_with_partitions(commits, {})
    # Every outcome and DLQ copy names its input position: org = partition, project = offset.
    next_offset = {0: 0, 1: 0}
    expected = 0
    for partition, kinds in plan:
        first = next_offset[partition]
        values = []
        for offset, kind in enumerate(kinds, start=first):
            if kind == "billable":
                values.append(bucket(float(offset + 1), org_id=partition, project_id=offset))
                undelivered[partition].add(offset)
                expected += offset + 1
            elif kind == "filtered":
                values.append(NOT_BILLABLE)
            else:
                values.append(b"{invalid %d:%d" % (partition, offset))
                undelivered[partition].add(offset)
        next_offset[partition] += len(kinds)
        strategy.submit(run(values, first, partition))
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
    assert sum(o["quantity"] for o in outcomes(broker)) == expected

"""`TranslateOutcomes`: runs in, batches out (closing inside a run), backpressure, metrics."""

from __future__ import annotations

from typing import Any

import pytest
from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.local.backend import LocalBroker
from arroyo.processing.strategies.abstract import MessageRejected
from arroyo.types import Message
from prometheus_client import CollectorRegistry

from tests.support.billing_fakes import (
    BILLABLE,
    NOT_BILLABLE,
    CommitLog,
    FakeProducer,
    bucket,
    expected_outcome,
    make_factory,
    outcomes,
    poll_for,
    run,
    settle,
)
from workers.billing.counting import SPANS_USAGE_METRIC_ID
from workers.billing.tally import LATENCY_SAMPLE_EVERY
from workers.billing.traffic import sample_traffic


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


def test_backpressure_rejects_a_run_before_touching_it(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker, auto=False)
    commits = CommitLog()
    factory = make_factory(producer, registry, max_pending_outcomes=2)
    strategy = factory.create_with_partitions(commits, {})
    strategy.submit(run([BILLABLE], 0))
    strategy.submit(run([BILLABLE], 1))
    # The third closes a batch the next step cannot take yet: it is kept, not rejected...
    strategy.submit(run([bucket(9.0)], 2))
    fourth = run([bucket(1.0)], 3)
    # ...and the next run is rejected before it is looked at.
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


def test_batches_closed_inside_a_run_wait_in_order_for_the_next_step(
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
    assert len(producer.pending) == 2
    with pytest.raises(MessageRejected):
        strategy.submit(run([BILLABLE], 10))
    producer.auto = True
    settle(strategy, lambda: commits.at() == 10)
    strategy.submit(run([BILLABLE], 10))
    strategy.close()
    strategy.join(1.0)
    assert commits.at() == 11
    assert len(outcomes(broker)) == 11


def test_metrics_per_step_and_per_category(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    strategy = make_factory(FakeProducer(broker), registry).create_with_partitions(CommitLog(), {})
    values = [
        BILLABLE,
        NOT_BILLABLE,
        bucket(2.5, metric_id=SPANS_USAGE_METRIC_ID, use_case_id="spans"),
        bucket([1.0]),
        bucket([1.0, 2.0], type="d", use_case_id="made-up-use-case"),
        bucket("x"),
    ]
    strategy.submit(run(values, 0))
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


def test_aggregation_sums_per_project_and_category_with_identical_totals(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker)
    commits = CommitLog()
    factory = make_factory(
        producer, registry, max_batch_messages=10_000, aggregate_window_seconds=60.0
    )
    strategy = factory.create_with_partitions(commits, {})
    values = [payload.value for payload in sample_traffic(3000, 11)]
    expected: dict[tuple[int, int, int], int] = {}
    billable = 0
    for raw in values:
        outcome = expected_outcome(raw)
        if outcome is not None:
            billable += 1
            org_id, project_id, category, quantity = outcome
            key = (org_id, project_id, category)
            expected[key] = expected.get(key, 0) + quantity
    for first in range(0, len(values), 250):
        strategy.submit(run(values[first : first + 250], first))
    poll_for(strategy)
    assert producer.batches == 0  # the window is still open: nothing produced, nothing committed
    assert commits.at() is None
    strategy.close()
    strategy.join(1.0)
    found = outcomes(broker)
    assert len(found) == len(expected) < billable / 50
    assert {(o["org_id"], o["project_id"], o["category"]): o["quantity"] for o in found} == expected
    assert commits.at() == len(values)


def test_aggregation_window_closes_on_time(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    commits = CommitLog()
    factory = make_factory(
        FakeProducer(broker), registry, max_batch_messages=10_000, aggregate_window_seconds=0.05
    )
    strategy = factory.create_with_partitions(commits, {})
    strategy.submit(run([bucket(2.0)] * 10, 0))
    settle(strategy, lambda: commits.at() == 10)
    assert [o["quantity"] for o in outcomes(broker)] == [20]
    strategy.submit(run([bucket(3.0)], 10))
    settle(strategy, lambda: commits.at() == 11)
    assert [o["quantity"] for o in outcomes(broker)] == [20, 3]

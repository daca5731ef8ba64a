"""Billing's DLQ limit (`LimitDeadLetters`): its runs' invalid messages are counted before
they are dead-lettered; beyond a limit nothing of the breaking batch, or after it, commits."""

from __future__ import annotations

from datetime import datetime

import pytest
from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.local.backend import LocalBroker
from arroyo.dlq import DlqLimit
from arroyo.processing.strategies.abstract import MessageRejected, ProcessingStrategy
from arroyo.types import BrokerValue, Message, Partition, Value
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry

from tests.support.billing_fakes import (
    DLQ,
    INPUT,
    NOW_NS,
    OUTPUT,
    CollectBatches,
    CommitLog,
    FakeProducer,
    RawMessage,
    bucket,
    dlq_messages,
    make_factory,
    run,
    settle,
)
from tests.support.transactional_fakes import FakeGroupConsumer, FakeTransactionalProducer
from workers.billing.batch import DeadLetter, OutcomeBatch
from workers.billing.factory import BillingStrategyFactory
from workers.billing.limit_dead_letters import LimitDeadLetters
from workers.billing.transactions import ExactlyOnce
from workers.common.dlq_limit import DlqLimiter, DlqLimitExceeded
from workers.common.message_runs import MessageRun
from workers.common.metrics import FleetMetrics

P0 = Partition(INPUT, 0)
BAD = b"{not json"


def limiter(max_consecutive: int | None = None, max_ratio: float | None = None) -> DlqLimiter:
    limit = DlqLimit(max_invalid_ratio=max_ratio, max_consecutive_count=max_consecutive)
    return DlqLimiter(limit, "billing", FleetMetrics(CollectorRegistry(), "billing"))


def dead_letter_offsets(broker: LocalBroker[KafkaPayload]) -> list[int]:
    return [int(dict(m.headers)["original_offset"]) for m in dlq_messages(broker)]


def test_at_least_once_stops_without_committing_the_breaking_message(
    broker: LocalBroker[KafkaPayload], registry: CollectorRegistry
) -> None:
    producer = FakeProducer(broker)
    commits = CommitLog()
    factory = make_factory(
        producer, registry, dlq_topic=DLQ.name, dlq_limiter=limiter(max_consecutive=3)
    )
    strategy = factory.create_with_partitions(commits, {P0: 0})
    strategy.submit(run([bucket(2.0), bucket(3.0), BAD], 0))
    settle(strategy, lambda: commits.at(0) == 3)
    with pytest.raises(DlqLimitExceeded) as raised:
        strategy.submit(run([BAD] * 5, 3))
    # Offsets 2, 3 and 4 are the run of three; 5 is the fourth in a row.
    assert (raised.value.limit, raised.value.offset) == ("max_consecutive_invalid", 5)
    strategy.terminate()
    factory.shutdown()
    committed = commits.at(0)
    assert committed is not None
    assert committed <= 5, "committed past the breaking message"
    assert max(dead_letter_offsets(broker)) < 5, "dead-lettered the breaking message"


def test_a_batch_pushed_back_is_counted_once() -> None:
    class RejectOnce(CollectBatches):
        rejected = False

        def submit(self, message: Message[OutcomeBatch]) -> None:
            if not self.rejected:
                self.rejected = True
                raise MessageRejected()
            super().submit(message)

    next_step = RejectOnce()
    # One invalid message for the 1000 valid ones a partition starts with is the limit.
    step = LimitDeadLetters(limiter(max_ratio=0.001), next_step)
    letter = DeadLetter(RawMessage(BAD, 7), P0, "invalid_json: unexpected character")
    batch = OutcomeBatch([], {}, frozenset(), 1, [letter])
    message = Message(Value(batch, {P0: 8}))
    with pytest.raises(MessageRejected):
        step.submit(message)
    step.submit(message)  # the same batch again: not a second invalid message in a row
    assert next_step.batches == [batch]


class ExactlyOnceChain:
    """The exactly-once chain over fakes with a consecutive limit of 3, from offset 0."""

    def __init__(self) -> None:
        self.producer = FakeTransactionalProducer()
        self.consumer = FakeGroupConsumer({P0: 0})
        self.factory = BillingStrategyFactory(
            metrics=FleetMetrics(CollectorRegistry(), "billing"),
            exactly_once=ExactlyOnce(
                producer_factory=lambda: self.producer,
                consumer=self.consumer,
                transaction_interval_seconds=0.01,
            ),
            outcomes_topic=OUTPUT.name,
            clock_ns=lambda: NOW_NS,
            max_batch_messages=1,
            max_batch_seconds=0.0,
            dlq_topic=DLQ.name,
            dlq_limiter=limiter(max_consecutive=3),
        )
        self.strategy: ProcessingStrategy[MessageRun] = self.factory.create_with_partitions(
            CommitLog(), {P0: 0}
        )

    def submit(self, values: list[bytes], first: int) -> None:
        raws = [RawMessage(value, first + i) for i, value in enumerate(values)]
        value = BrokerValue(MessageRun(raws, self.consumer.epoch), P0, first, datetime.now())
        self.strategy.submit(Message(value))


def test_exactly_once_leaves_the_open_transaction_uncommitted() -> None:
    chain = ExactlyOnceChain()
    chain.submit([bucket(2.0), BAD], 0)
    settle(chain.strategy, lambda: chain.producer.commits == 1)
    chain.submit([bucket(4.0), BAD, BAD], 2)  # in the open transaction, within the limit
    with pytest.raises(DlqLimitExceeded) as raised:
        chain.submit([BAD, BAD], 5)
    assert raised.value.offset == 6  # 3, 4 and 5 are the run of three
    chain.strategy.terminate()
    chain.factory.shutdown()
    assert chain.producer.commits == 1, "a transaction committed after the limit was exceeded"
    assert chain.producer.committed_offsets == {(INPUT.name, 0): 2}
    assert chain.producer.values(DLQ.name) == [BAD]  # offset 1's copy, the only one committed


def test_exactly_once_counts_a_rewound_stretch_once() -> None:
    chain = ExactlyOnceChain()
    chain.submit([BAD, BAD, BAD], 0)
    chain.producer.fail_next_delivery = KafkaError(KafkaError._MSG_TIMED_OUT)
    settle(chain.strategy, lambda: chain.producer.aborts == 1)
    assert chain.consumer.seeks == [{P0: 0}]
    # Read again from the last commit: the same three, not six in a row.
    chain.submit([BAD, BAD, BAD], 0)
    settle(chain.strategy, lambda: chain.producer.commits == 1)
    assert chain.producer.values(DLQ.name) == [BAD] * 3
    with pytest.raises(DlqLimitExceeded):
        chain.submit([BAD], 3)

"""Exactly-once billing: the chain `BillingStrategyFactory` builds with `ExactlyOnce`.

Outcomes, DLQ copies and input offsets commit in one transaction; every failure either
aborts and rewinds (nothing skipped, nothing doubled) or ends the process (fenced, fatal).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime

import orjson
import pytest
from arroyo.processing.strategies.abstract import ProcessingStrategy
from arroyo.types import BrokerValue, Message, Partition
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry

from tests.support.billing_fakes import (
    DLQ,
    INPUT,
    NOW_NS,
    OUTPUT,
    CommitLog,
    GatedFlagStore,
    RawMessage,
    bucket,
    custom_bucket,
)
from tests.support.transactional_fakes import FakeGroupConsumer, FakeTransactionalProducer
from workers.billing.factory import BillingStrategyFactory
from workers.billing.transactions import (
    ExactlyOnce,
    FatalProducerError,
    ProducerFenced,
)
from workers.common.backoff import Backoff
from workers.common.call_watchdog import STUCK_EXIT_CODE, CallWatchdog
from workers.common.message_runs import MessageRun
from workers.common.metrics import FleetMetrics

P0, P1 = Partition(INPUT, 0), Partition(INPUT, 1)
INTERVAL = 0.01


class Chain:
    """The exactly-once chain over fakes, assigned partitions 0 and 1 from offset 0."""

    def __init__(
        self, store: GatedFlagStore | None = None, aggregate_window_seconds: float | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self.producer = FakeTransactionalProducer()
        self.consumer = FakeGroupConsumer({P0: 0, P1: 0})
        self.noted: list[dict[tuple[str, int], int]] = []
        self.arroyo_commits = CommitLog()
        self.factory = BillingStrategyFactory(
            metrics=FleetMetrics(self.registry, "billing"),
            exactly_once=ExactlyOnce(
                producer_factory=lambda: self.producer,
                consumer=self.consumer,
                transaction_interval_seconds=INTERVAL,
                note_committed=lambda offsets: self.noted.append(dict(offsets)),
            ),
            flag_store_factory=(lambda _metrics: store) if store is not None else None,
            outcomes_topic=OUTPUT.name,
            clock_ns=lambda: NOW_NS,
            max_batch_messages=1,
            max_batch_seconds=0.0,
            flag_backoff=Backoff(0.001, 0.01),
            dlq_topic=DLQ.name,
            aggregate_window_seconds=aggregate_window_seconds,
        )
        self.strategy: ProcessingStrategy[MessageRun] = self.factory.create_with_partitions(
            self.arroyo_commits, {P0: 0, P1: 0}
        )

    def submit(self, values: Sequence[bytes], first: int, partition: int = 0) -> None:
        self.strategy.submit(run_at(values, first, partition, self.consumer.epoch))

    def settle(self, until: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 5.0
        while not until():
            assert time.monotonic() < deadline, "the chain made no progress"
            self.strategy.poll()
            time.sleep(0.001)

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, {"worker": "billing", **labels})
        return value or 0.0

    def quantities(self) -> Counter[int]:
        """Committed outcomes: project id → how many outcomes bill it."""
        return Counter(orjson.loads(v)["project_id"] for v in self.producer.values(OUTPUT.name))


def run_at(values: Sequence[bytes], first: int, partition: int, epoch: int) -> Message[MessageRun]:
    raws = [RawMessage(value, first + i) for i, value in enumerate(values)]
    run = MessageRun(raws, epoch)
    return Message(BrokerValue(run, Partition(INPUT, partition), raws[-1].offset(), datetime.now()))


def buckets(projects: range) -> list[bytes]:
    return [bucket(3.0, project_id=project) for project in projects]


def test_outcomes_dlq_copies_and_offsets_commit_together_after_the_interval() -> None:
    chain = Chain()
    chain.submit([*buckets(range(3)), b"not json"], 0, partition=0)
    chain.submit(buckets(range(10, 12)), 0, partition=1)
    assert chain.producer.initialised == 1
    assert chain.producer.committed == [], "nothing is visible before the commit"
    chain.settle(lambda: chain.producer.commits >= 1)
    assert chain.quantities() == Counter({0: 1, 1: 1, 2: 1, 10: 1, 11: 1})
    (letter,) = chain.producer.values(DLQ.name)
    assert letter == b"not json"
    assert chain.producer.committed_offsets == {(INPUT.name, 0): 4, (INPUT.name, 1): 2}
    assert chain.producer.group_metadata == [("group-metadata", 0)]
    assert chain.noted[-1] == {(INPUT.name, 0): 4, (INPUT.name, 1): 2}
    assert chain.arroyo_commits.calls == [], "Arroyo's own commit never runs in this mode"
    assert chain.metric("workers_billing_transactions_committed_total") == 1
    assert chain.metric("workers_billing_transaction_size_messages_count") == 1
    assert chain.metric("workers_billing_transaction_size_messages_sum") == 6


def test_a_failed_delivery_aborts_rewinds_and_bills_each_bucket_once() -> None:
    chain = Chain()
    chain.submit(buckets(range(3)), 0)
    chain.settle(lambda: chain.producer.commits == 1)
    chain.submit(buckets(range(3, 6)), 3)
    chain.submit(buckets(range(20, 22)), 0, partition=1)
    chain.producer.fail_next_delivery = KafkaError(KafkaError._MSG_TIMED_OUT)
    chain.settle(lambda: chain.producer.aborts == 1)
    # Both partitions are read again from the last commit; nothing of the aborted one shows.
    assert chain.consumer.seeks == [{P0: 3, P1: 0}]
    assert chain.quantities() == Counter({0: 1, 1: 1, 2: 1})
    assert chain.metric("workers_billing_transactions_aborted_total", reason="produce_error") == 1
    # A run fetched before the seek (Arroyo's carried-over message) is dropped...
    chain.strategy.submit(run_at(buckets(range(6, 8)), 6, 0, epoch=0))
    # ...and the runs read again after it are billed, once.
    chain.submit(buckets(range(3, 8)), 3)
    chain.submit(buckets(range(20, 22)), 0, partition=1)
    chain.settle(lambda: chain.producer.commits == 2)
    assert chain.quantities() == Counter({p: 1 for p in [*range(8), 20, 21]})
    assert chain.producer.committed_offsets == {(INPUT.name, 0): 8, (INPUT.name, 1): 2}


def test_a_commit_refused_with_an_abortable_error_aborts_and_rewinds() -> None:
    chain = Chain()
    chain.submit(buckets(range(2)), 0)
    chain.producer.commit_error = KafkaError(
        KafkaError.INVALID_TXN_STATE, "abortable", txn_requires_abort=True
    )
    chain.settle(lambda: chain.producer.aborts == 1)
    assert chain.consumer.seeks == [{P0: 0, P1: 0}]
    assert chain.producer.committed == []
    assert chain.metric("workers_billing_transactions_aborted_total", reason="commit_error") == 1
    chain.submit(buckets(range(2)), 0)
    chain.settle(lambda: chain.producer.commits == 1)
    assert chain.quantities() == Counter({0: 1, 1: 1})


def test_a_fenced_producer_raises_and_never_commits() -> None:
    chain = Chain()
    chain.submit(buckets(range(2)), 0)
    chain.producer.commit_error = KafkaError(KafkaError._FENCED, "fenced", fatal=True)
    with pytest.raises(ProducerFenced):
        chain.settle(lambda: False)
    assert chain.producer.committed == []
    assert chain.producer.aborts == 0
    assert chain.metric("workers_billing_producer_fenced_total") == 1


def test_a_fatal_producer_error_raises() -> None:
    chain = Chain()
    chain.submit(buckets(range(2)), 0)
    chain.producer.commit_error = KafkaError(KafkaError._FATAL, "broken", fatal=True)
    with pytest.raises(FatalProducerError):
        chain.settle(lambda: False)
    assert chain.producer.committed == []


def test_before_revocation_the_open_transaction_is_committed() -> None:
    chain = Chain()
    chain.submit(buckets(range(2)), 0)
    chain.strategy.close()
    chain.strategy.join(5.0)
    assert chain.producer.commits == 1
    assert chain.quantities() == Counter({0: 1, 1: 1})
    assert chain.producer.committed_offsets == {(INPUT.name, 0): 2}


def test_before_revocation_a_failed_transaction_is_aborted_not_committed() -> None:
    chain = Chain()
    chain.submit(buckets(range(2)), 0)
    chain.producer.fail_next_delivery = KafkaError(KafkaError._MSG_TIMED_OUT)
    chain.strategy.close()
    chain.strategy.join(5.0)
    assert (chain.producer.commits, chain.producer.aborts) == (0, 1)
    assert chain.metric("workers_billing_transactions_aborted_total", reason="revoked") == 1


def test_aggregation_windows_commit_in_transactions_and_replay_exactly() -> None:
    chain = Chain(aggregate_window_seconds=0.005)
    chain.submit([bucket(2.0, project_id=1), bucket(3.0, project_id=1)], 0)
    chain.submit([bucket(4.0, project_id=2)], 0, partition=1)
    chain.settle(lambda: chain.producer.committed_offsets.get((INPUT.name, 1)) == 1)
    chain.settle(lambda: chain.producer.committed_offsets.get((INPUT.name, 0)) == 2)
    chain.submit([bucket(5.0, project_id=1)], 2)
    chain.producer.fail_next_delivery = KafkaError(KafkaError._MSG_TIMED_OUT)
    chain.settle(lambda: chain.producer.aborts == 1)
    chain.submit([bucket(5.0, project_id=1)], 2)
    chain.settle(lambda: chain.producer.committed_offsets.get((INPUT.name, 0)) == 3)
    totals: Counter[int] = Counter()
    for value in chain.producer.values(OUTPUT.name):
        outcome = orjson.loads(value)
        totals[outcome["project_id"]] += outcome["quantity"]
    assert totals == Counter({1: 10, 2: 4}), "the aborted window was neither lost nor doubled"


def test_a_batch_enters_the_transaction_only_once_its_flag_work_is_durable() -> None:
    store = GatedFlagStore(existing={(1, 5)})
    store.gate.clear()
    chain = Chain(store)
    chain.submit([custom_bucket(1, 5)], 0)
    chain.submit(buckets(range(2)), 1)
    deadline = time.monotonic() + INTERVAL * 3
    while time.monotonic() < deadline:  # several intervals pass with the flag work held up
        chain.strategy.poll()
    assert chain.producer.commits == 0
    assert chain.producer.open is False, "no transaction while its first batch waits"
    store.gate.set()
    chain.settle(lambda: chain.producer.commits >= 1)
    assert store.flagged == {(1, 5)}
    chain.settle(lambda: chain.producer.committed_offsets.get((INPUT.name, 0)) == 3)
    assert chain.quantities() == Counter({0: 1, 1: 1})


def test_the_watchdog_ends_a_process_stuck_past_a_call_timeout() -> None:
    exits: list[int] = []
    exited = threading.Event()

    def exit_process(code: int) -> None:
        exits.append(code)
        exited.set()

    watchdog = CallWatchdog(grace_seconds=0.05, exit_process=exit_process)
    with watchdog.guard("quick", timeout=1.0):
        pass
    with watchdog.guard("stuck", timeout=0.01):
        assert exited.wait(5.0)
    assert exits == [STUCK_EXIT_CODE]

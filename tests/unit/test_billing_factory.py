"""`BillingStrategyFactory`: lazy resources, shutdown, and the chain under a `StreamProcessor`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import orjson
import pytest
from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.local.backend import LocalBroker
from arroyo.commit import IMMEDIATE
from arroyo.processing import StreamProcessor
from arroyo.types import Partition, Topic
from prometheus_client import CollectorRegistry

from tests.support.billing_fakes import (
    DLQ,
    INPUT,
    OUTPUT,
    CommitLog,
    FakeProducer,
    LocalRuns,
    bucket,
    dlq_messages,
    expected_outcome,
    make_factory,
    outcomes,
)
from workers.billing.factory import BillingStrategyFactory
from workers.billing.message import BucketError, parse_bucket
from workers.billing.metrics import BillingMetrics
from workers.billing.outcome_producer import OutcomeDeliveryError
from workers.billing.traffic import sample_traffic
from workers.common.message_runs import MessageRun
from workers.common.metrics import FleetMetrics

GROUP = "billing-metrics-consumer"


def committed(broker: LocalBroker[KafkaPayload]) -> dict[Partition, int]:
    """The group's committed offsets, as a new member of the group is assigned them."""
    check = broker.get_consumer(GROUP)
    assigned: dict[Partition, int] = {}
    check.subscribe([INPUT], on_assign=assigned.update)
    check.poll(0)
    check.close()
    return assigned


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


def _run_processor(
    processor: StreamProcessor[MessageRun], until: Callable[[], bool], limit: float = 10.0
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
            parse_bucket(payload.value)
        except BucketError:
            expected_invalid += 1
            continue
        outcome = expected_outcome(payload.value)
        expected_quantity += outcome[3] if outcome is not None else 0
    assert 0 < expected_invalid < 30

    producer = FakeProducer(broker)
    factory = BillingStrategyFactory(
        producer_factory=lambda: producer,
        metrics=FleetMetrics(registry, "billing"),
        outcomes_topic=OUTPUT.name,
        max_batch_messages=50,
        dlq_topic=DLQ.name,
    )
    consumer = LocalRuns(broker.get_consumer(GROUP))
    processor = StreamProcessor(consumer, INPUT, factory, commit_policy=IMMEDIATE)

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
    copies = dlq_messages(broker)
    assert len(copies) == expected_invalid
    assert all(dict(copy.headers)["reason"] for copy in copies)

    # Every input offset is committed after a clean shutdown.
    assert committed(broker) == {Partition(INPUT, 0): 300, Partition(INPUT, 1): 300}


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
    consumer = LocalRuns(broker.get_consumer(GROUP))
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
    # Offsets 0-2 were acknowledged and may be committed; offset 3 failed: never past it.
    assert committed(broker)[Partition(INPUT, 0)] <= 3
    assert [o["quantity"] for o in outcomes(broker)][:3] == [1, 2, 3]


def test_billing_metrics_are_registered_once_per_registry(registry: CollectorRegistry) -> None:
    BillingMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        BillingMetrics(registry)

"""`UnrollRuns` and `RunDeadLetters` on their own: what the per-message chain receives from a
run, where a rejected run resumes, and what becomes of the invalid messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import pytest
from arroyo.backends.kafka import KafkaPayload
from arroyo.backends.local.backend import LocalBroker
from arroyo.backends.local.storages.memory import MemoryMessageStorage
from arroyo.dlq import DlqLimit, InvalidMessage
from arroyo.processing.strategies.abstract import MessageRejected, ProcessingStrategy
from arroyo.types import BrokerValue, Message, Partition, Topic
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from tests.support.billing_fakes import RawMessage
from tests.support.local_dlq_producer import LocalDlqProducer
from workers.common.dlq import InvalidPayload
from workers.common.dlq_limit import DlqLimiter, DlqLimitExceeded
from workers.common.message_runs import MessageRun
from workers.common.metrics import FleetMetrics
from workers.common.run_dead_letters import DeadLetterDeliveryError, RunDeadLetters
from workers.common.strategies.unroll_runs import UnrollRuns

INPUT = Topic("in")
DLQ = Topic("in-dlq")
PARTITION = Partition(INPUT, 1)
WORKER = "unroll-test"


class Recorder(ProcessingStrategy[KafkaPayload]):
    """Takes messages until `capacity` is reached; raises `InvalidPayload` for the values
    in `invalid` (from `poll`, as `RunTaskInPool` does)."""

    def __init__(self, capacity: int = 1_000, invalid: frozenset[bytes] = frozenset()) -> None:
        self.capacity = capacity
        self.invalid = invalid
        self.received: list[tuple[int, bytes | None, bytes, list[tuple[str, bytes]]]] = []
        self.refused: list[InvalidMessage] = []

    def submit(self, message: Message[KafkaPayload]) -> None:
        if len(self.received) >= self.capacity:
            raise MessageRejected
        value = message.value
        assert isinstance(value, BrokerValue)
        assert value.partition == PARTITION
        payload = message.payload
        if payload.value in self.invalid:
            self.refused.append(InvalidPayload(payload, value.partition, value.offset, "bad: no"))
            return
        self.received.append((value.offset, payload.key, payload.value, list(payload.headers)))

    def poll(self) -> None:
        if self.refused:
            raise self.refused.pop(0)

    def join(self, timeout: float | None = None) -> None:
        self.poll()

    def close(self) -> None:
        pass

    def terminate(self) -> None:
        pass


def run_of(values: list[bytes | None], first: int = 10) -> BrokerValue[MessageRun]:
    raws = [
        RawMessage(value, first + i, [("h", b"%d" % i)], b"k%d" % i)
        for i, value in enumerate(values)
    ]
    return BrokerValue(MessageRun(raws), PARTITION, first + len(values) - 1, datetime.now())


def dead_letters(
    limiter: DlqLimiter | None = None, with_topic: bool = True
) -> tuple[RunDeadLetters, LocalDlqProducer, LocalBroker[KafkaPayload]]:
    broker: LocalBroker[KafkaPayload] = LocalBroker(MemoryMessageStorage())
    broker.create_topic(DLQ, partitions=1)
    producer = LocalDlqProducer(broker, lambda offset: None)
    metrics = FleetMetrics(CollectorRegistry(), WORKER)
    letters = RunDeadLetters(
        cast(Producer, producer) if with_topic else None,
        DLQ.name if with_topic else None,
        WORKER,
        metrics,
        limiter,
    )
    return letters, producer, broker


def dlq_offsets(broker: LocalBroker[KafkaPayload]) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    while (message := broker.consume(Partition(DLQ, 0), len(found))) is not None:
        headers = dict(message.payload.headers)
        found.append((int(headers["original_offset"]), headers["reason"].decode()))
    return found


def test_every_message_of_a_run_goes_on_with_its_own_offset_key_value_and_headers() -> None:
    recorder = Recorder()
    letters, _, _ = dead_letters()
    UnrollRuns(recorder, letters).submit(Message(run_of([b"a", None, b"c"])))
    assert recorder.received == [
        (10, b"k0", b"a", [("h", b"0")]),
        (11, b"k1", b"", [("h", b"1")]),  # a missing value is empty bytes
        (12, b"k2", b"c", [("h", b"2")]),
    ]


def test_a_rejected_run_resumes_at_the_rejected_message_when_submitted_again() -> None:
    recorder = Recorder(capacity=2)
    letters, _, _ = dead_letters()
    unroll = UnrollRuns(recorder, letters)
    value = run_of([b"a", b"b", b"c", b"d", b"e"])
    with pytest.raises(MessageRejected):
        unroll.submit(Message(value))
    recorder.capacity = 4
    with pytest.raises(MessageRejected):
        unroll.submit(Message(value))  # Arroyo wraps the same BrokerValue in a new Message
    recorder.capacity = 10
    unroll.submit(Message(value))
    assert [offset for offset, *_ in recorder.received] == [10, 11, 12, 13, 14]


def test_another_run_after_a_rejected_one_starts_from_its_first_message() -> None:
    recorder = Recorder(capacity=1)
    letters, _, _ = dead_letters()
    unroll = UnrollRuns(recorder, letters)
    with pytest.raises(MessageRejected):
        unroll.submit(Message(run_of([b"a", b"b"])))
    recorder.capacity = 10
    # The rejected run was dropped (a rebalance): the next run is read whole.
    unroll.submit(Message(run_of([b"x", b"y"], first=20)))
    assert [offset for offset, *_ in recorder.received] == [10, 20, 21]


def test_invalid_messages_are_copied_to_the_dlq_with_their_reason_and_the_run_goes_on() -> None:
    recorder = Recorder(invalid=frozenset({b"bad1", b"bad2"}))
    letters, producer, broker = dead_letters()
    unroll = UnrollRuns(recorder, letters)
    unroll.submit(Message(run_of([b"a", b"bad1", b"c", b"bad2", b"e"])))
    unroll.poll()
    assert [offset for offset, *_ in recorder.received] == [10, 12, 14]
    assert dlq_offsets(broker) == [(11, "bad: no"), (13, "bad: no")]
    assert len(producer) == 0


def test_without_a_dlq_topic_an_invalid_message_is_skipped_and_nothing_waits_for_it() -> None:
    recorder = Recorder(invalid=frozenset({b"bad"}))
    letters, _, broker = dead_letters(with_topic=False)
    unroll = UnrollRuns(recorder, letters)
    unroll.submit(Message(run_of([b"a", b"bad", b"c"])))
    unroll.poll()
    committed: list[dict[Partition, int]] = []
    letters.gate(lambda offsets, force=False: committed.append(dict(offsets)))({PARTITION: 13})
    assert committed == [{PARTITION: 13}]
    assert dlq_offsets(broker) == []


def test_beyond_the_dlq_limit_nothing_of_the_message_is_produced() -> None:
    metrics = FleetMetrics(CollectorRegistry(), WORKER)
    limiter = DlqLimiter(DlqLimit(max_consecutive_count=1), WORKER, metrics)
    recorder = Recorder(invalid=frozenset({b"bad1", b"bad2"}))
    letters, _, broker = dead_letters(limiter)
    letters.reset({PARTITION: 10})
    unroll = UnrollRuns(recorder, letters)
    unroll.submit(Message(run_of([b"bad1", b"bad2", b"c"])))
    with pytest.raises(DlqLimitExceeded):
        unroll.poll()
    unroll.join()  # the copy of the first, within the limit, is flushed
    assert dlq_offsets(broker) == [(10, "bad: no")]


def test_an_invalid_message_without_its_payload_is_a_bug_not_a_dead_letter() -> None:
    letters, _, broker = dead_letters()
    with pytest.raises(TypeError, match="InvalidMessage carries no payload"):
        letters.dead_letter(InvalidMessage(PARTITION, 3, reason="bad"))
    assert dlq_offsets(broker) == []


def test_a_dlq_topic_without_a_producer_is_refused() -> None:
    metrics = FleetMetrics(CollectorRegistry(), WORKER)
    with pytest.raises(ValueError, match="a DLQ topic needs a producer"):
        RunDeadLetters(None, DLQ.name, WORKER, metrics)
    with pytest.raises(ValueError, match="a DLQ topic needs a producer"):
        RunDeadLetters(cast(Any, object()), None, WORKER, metrics)


def test_a_dlq_producer_queue_that_stays_full_stops_the_worker_at_the_timeout() -> None:
    class FullProducer(LocalDlqProducer):
        def produce(self, *args: Any, **kwargs: Any) -> None:
            raise BufferError("queue full")

    broker: LocalBroker[KafkaPayload] = LocalBroker(MemoryMessageStorage())
    metrics = FleetMetrics(CollectorRegistry(), WORKER)
    letters = RunDeadLetters(
        cast(Producer, FullProducer(broker, lambda offset: None)),
        DLQ.name,
        WORKER,
        metrics,
        delivery_timeout_seconds=0.2,
    )
    invalid = InvalidPayload(KafkaPayload(None, b"bad", []), PARTITION, 7, "bad: no")
    with pytest.raises(DeadLetterDeliveryError, match=r"DLQ producer queue full for 0\.2 s"):
        letters.dead_letter(invalid)
    letters.flush(0)  # the copy that was never queued is not waited for at shutdown

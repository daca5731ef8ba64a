"""`TwoStagePipeline`, `RunTaskInPool` and `OrderedBatchStep` on their own: what reaches the
next step (`CommitOffsets` in the chains), in which order and when."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest
from arroyo.dlq import InvalidMessage
from arroyo.processing.strategies import BatchStep
from arroyo.processing.strategies.abstract import MessageRejected, ProcessingStrategy
from arroyo.types import FILTERED_PAYLOAD, BrokerValue, FilteredPayload, Message, Partition, Topic

from harness.waiting import wait_for
from workers.common.strategies import OrderedBatchStep, RunTaskInPool, TwoStagePipeline

PARTITION = Partition(Topic("input"), 0)
NOW = datetime(2026, 1, 1)
DEADLINE = 10.0


def message(offset: int, payload: Any = None) -> Message[Any]:
    return Message(BrokerValue(offset if payload is None else payload, PARTITION, offset, NOW))


def filtered(offset: int) -> Message[Any]:
    return Message(BrokerValue(FILTERED_PAYLOAD, PARTITION, offset, NOW))


class Recorder(ProcessingStrategy[Any]):
    """The next step: records what it is given; rejects while `rejecting` is set."""

    def __init__(self) -> None:
        self.received: list[Message[Any]] = []
        self.rejecting = False
        self.closed = self.joined = self.terminated = False

    def submit(self, message: Message[Any]) -> None:
        if self.rejecting:
            raise MessageRejected
        self.received.append(message)

    def poll(self) -> None:
        return None

    def join(self, timeout: float | None = None) -> None:
        self.joined = True

    def close(self) -> None:
        self.closed = True

    def terminate(self) -> None:
        self.terminated = True

    def committed(self) -> int:
        """The highest offset the recorded messages let CommitOffsets commit."""
        return max((m.committable[PARTITION] for m in self.received), default=0)

    def payloads(self) -> list[Any]:
        return [m.payload for m in self.received if not isinstance(m.payload, FilteredPayload)]


def poll_until(step: ProcessingStrategy[Any], done: Callable[[], bool], what: str) -> None:
    def probe() -> bool:
        step.poll()
        return done()

    wait_for(probe, DEADLINE, what, interval=0.005)


class Gates:
    """Stages that record when they run and wait for the test to open their gate."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.gates: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def gate(self, name: str) -> threading.Event:
        with self.lock:
            return self.gates.setdefault(name, threading.Event())

    def record(self, event: str) -> None:
        with self.lock:
            self.events.append(event)

    def started(self, event: str) -> bool:
        with self.lock:
            return event in self.events

    def first(self, message: Message[int]) -> int:
        self.record(f"store {message.payload}")
        assert self.gate(f"store {message.payload}").wait(DEADLINE)
        return message.payload

    def second(self, value: int) -> str:
        self.record(f"commit {value}")
        assert self.gate(f"commit {value}").wait(DEADLINE)
        if value in self.failing:
            raise RuntimeError(f"transaction {value} failed")
        return f"persisted {value}"

    failing: frozenset[int] = frozenset()


# -- TwoStagePipeline -----------------------------------------------------------------------------


def test_stage_one_of_the_next_batch_overlaps_stage_two_and_offsets_follow_stage_two() -> None:
    gates, recorder = Gates(), Recorder()
    pipeline = TwoStagePipeline(gates.first, gates.second, recorder, max_in_flight=2)
    pipeline.submit(message(1))
    pipeline.submit(message(2))
    gates.gate("store 1").set()
    wait_for(lambda: gates.started("commit 1"), DEADLINE, "stage two of batch 1")
    gates.gate("store 2").set()
    # Batch 2 is stored while batch 1's stage two is still running...
    wait_for(lambda: gates.started("store 2"), DEADLINE, "stage one of batch 2")
    pipeline.poll()
    assert recorder.received == []  # ... and nothing is committed before stage two returns.
    gates.gate("commit 1").set()
    poll_until(pipeline, lambda: len(recorder.received) == 1, "batch 1 forwarded")
    assert recorder.payloads() == ["persisted 1"]
    assert recorder.committed() == 2
    gates.gate("commit 2").set()
    poll_until(pipeline, lambda: len(recorder.received) == 2, "batch 2 forwarded")
    assert recorder.payloads() == ["persisted 1", "persisted 2"]
    assert [event for event in gates.events if event.startswith("commit")] == [
        "commit 1",
        "commit 2",
    ]


def test_a_failed_stage_two_commits_nothing_after_it_and_abandons_the_next_batch() -> None:
    gates, recorder = Gates(), Recorder()
    gates.failing = frozenset({2})
    abandoned: list[int] = []
    pipeline = TwoStagePipeline(
        gates.first, gates.second, recorder, max_in_flight=3, abandon=abandoned.append
    )
    for offset in (1, 2, 3):
        pipeline.submit(message(offset))
        gates.gate(f"store {offset}").set()
    gates.gate("commit 1").set()
    gates.gate("commit 2").set()
    with pytest.raises(RuntimeError, match="transaction 2 failed"):
        poll_until(pipeline, lambda: False, "the failure")
    assert recorder.payloads() == ["persisted 1"]
    assert recorder.committed() == 2  # batch 1's offsets only: never past batch 2
    wait_for(lambda: abandoned == [3], DEADLINE, "batch 3 abandoned")
    assert not gates.started("commit 3")  # its transaction never ran
    with pytest.raises(RuntimeError, match="transaction 2 failed"):
        pipeline.poll()  # still the head: nothing after it goes on
    assert recorder.committed() == 2
    pipeline.terminate()


def test_a_failed_stage_one_stops_the_batches_after_it() -> None:
    recorder = Recorder()
    ran: list[int] = []

    def first(message: Message[int]) -> int:
        if message.payload == 1:
            raise OSError("disk full")
        return message.payload

    pipeline = TwoStagePipeline(first, ran.append, recorder, max_in_flight=2)
    pipeline.submit(message(1))
    pipeline.submit(message(2))
    with pytest.raises(OSError, match="disk full"):
        poll_until(pipeline, lambda: False, "the failure")
    assert recorder.received == []
    assert ran == []
    pipeline.terminate()


def test_batches_in_flight_are_bounded() -> None:
    gates, recorder = Gates(), Recorder()
    pipeline = TwoStagePipeline(gates.first, gates.second, recorder, max_in_flight=2)
    pipeline.submit(message(1))
    pipeline.submit(message(2))
    with pytest.raises(MessageRejected):
        pipeline.submit(message(3))
    for name in ("store 1", "commit 1"):
        gates.gate(name).set()
    poll_until(pipeline, lambda: len(recorder.received) == 1, "batch 1 forwarded")
    pipeline.submit(message(3))  # room again
    for name in ("store 2", "commit 2", "store 3", "commit 3"):
        gates.gate(name).set()
    poll_until(pipeline, lambda: len(recorder.received) == 3, "every batch forwarded")
    assert recorder.committed() == 4


def test_filtered_offsets_wait_behind_the_batch_before_them() -> None:
    gates, recorder = Gates(), Recorder()
    pipeline = TwoStagePipeline(gates.first, gates.second, recorder, max_in_flight=2)
    pipeline.submit(message(1))
    pipeline.submit(filtered(2))
    pipeline.submit(filtered(3))
    pipeline.poll()
    assert recorder.received == []
    gates.gate("store 1").set()
    gates.gate("commit 1").set()
    poll_until(pipeline, lambda: recorder.committed() == 4, "the filtered offsets")
    assert recorder.payloads() == ["persisted 1"]
    assert len(recorder.received) == 2  # adjacent filtered messages went on as one


def test_join_forwards_finished_batches_and_drops_unfinished_ones() -> None:
    gates, recorder = Gates(), Recorder()
    pipeline = TwoStagePipeline(gates.first, gates.second, recorder, max_in_flight=2)
    pipeline.submit(message(1))
    pipeline.submit(message(2))
    for name in ("store 1", "commit 1", "store 2"):
        gates.gate(name).set()
    pipeline.close()
    pipeline.join(timeout=0.5)  # batch 2's transaction never returns within it
    assert recorder.payloads() == ["persisted 1"]
    assert recorder.committed() == 2
    assert recorder.closed
    assert recorder.joined
    gates.gate("commit 2").set()


def test_join_waits_for_every_batch_in_flight() -> None:
    gates, recorder = Gates(), Recorder()
    pipeline = TwoStagePipeline(gates.first, gates.second, recorder, max_in_flight=2)
    pipeline.submit(message(1))
    pipeline.submit(message(2))
    for name in ("store 1", "commit 1", "store 2", "commit 2"):
        gates.gate(name).set()
    pipeline.close()
    pipeline.join()
    assert recorder.payloads() == ["persisted 1", "persisted 2"]


# -- RunTaskInPool --------------------------------------------------------------------------------


def validate(message: Message[int]) -> int:
    if message.payload % 10 == 3:
        value = message.value
        assert isinstance(value, BrokerValue)
        raise InvalidMessage(value.partition, value.offset, reason="bad", log_exception=False)
    return message.payload * 100


def test_results_keep_their_order_behind_a_slow_message_in_the_pool() -> None:
    recorder = Recorder()
    slow = threading.Event()

    def function(message: Message[int]) -> int:
        if message.payload == 1:
            assert slow.wait(DEADLINE)
        return message.payload * 100

    step = RunTaskInPool(
        function, recorder, threads=2, max_pending=10, max_pending_bytes=1 << 20,
        in_pool=lambda m: m.payload == 1,
    )  # fmt: skip
    for offset in (1, 2, 4):
        step.submit(message(offset))
    step.poll()
    assert recorder.received == []  # 2 and 4 are done, but wait for 1
    slow.set()
    poll_until(step, lambda: len(recorder.received) == 3, "all three forwarded")
    assert recorder.payloads() == [100, 200, 400]


@pytest.mark.parametrize("in_pool", [True, False], ids=["in the pool", "inline"])
def test_invalid_message_is_raised_in_order_with_its_own_offset(in_pool: bool) -> None:
    recorder = Recorder()
    step = RunTaskInPool(
        validate, recorder, threads=2, max_pending=10, max_pending_bytes=1 << 20,
        in_pool=lambda _: in_pool,
    )  # fmt: skip
    for offset in (11, 12, 13, 14):
        step.submit(message(offset))
    with pytest.raises(InvalidMessage) as raised:
        poll_until(step, lambda: False, "the invalid message")
    assert (raised.value.partition, raised.value.offset) == (PARTITION, 13)
    assert recorder.payloads() == [1100, 1200]  # everything before it went on first
    assert recorder.committed() == 13
    poll_until(step, lambda: recorder.committed() == 15, "the rest")
    assert recorder.payloads() == [1100, 1200, 1400]
    # the invalid message's offset went on in its place, between 12 and 14
    assert [m.committable[PARTITION] for m in recorder.received] == [12, 13, 14, 15]
    assert isinstance(recorder.received[2].payload, FilteredPayload)


def test_join_raises_an_invalid_message_in_order_and_goes_on_when_called_again() -> None:
    """Arroyo's processor handles an InvalidMessage from `join` and calls `join` again."""
    recorder = Recorder()
    step = RunTaskInPool(validate, recorder, threads=2, max_pending=10, max_pending_bytes=1 << 20)
    for offset in (11, 12, 13, 14):
        step.submit(message(offset))
    step.close()
    with pytest.raises(InvalidMessage) as raised:
        step.join(timeout=DEADLINE)
    assert raised.value.offset == 13
    assert recorder.payloads() == [1100, 1200]
    assert not recorder.closed
    step.join(timeout=DEADLINE)
    assert recorder.payloads() == [1100, 1200, 1400]
    assert recorder.committed() == 15
    assert recorder.closed
    assert recorder.joined


def test_pending_messages_are_bounded_by_count_and_by_bytes() -> None:
    recorder = Recorder()
    recorder.rejecting = True
    by_count = RunTaskInPool(
        validate, recorder, threads=1, max_pending=2, max_pending_bytes=1 << 20,
        in_pool=lambda _: False,
    )  # fmt: skip
    by_count.submit(message(1))
    by_count.submit(message(2))
    with pytest.raises(MessageRejected):
        by_count.submit(message(4))
    by_bytes = RunTaskInPool(
        validate, recorder, threads=1, max_pending=100, max_pending_bytes=1000,
        in_pool=lambda _: False, weigh=lambda _: 600,
    )  # fmt: skip
    by_bytes.submit(message(1))  # one heavy message is accepted when nothing waits
    by_bytes.submit(message(2))
    with pytest.raises(MessageRejected):
        by_bytes.submit(message(4))


def test_a_result_the_next_step_rejects_is_offered_again() -> None:
    recorder = Recorder()
    step = RunTaskInPool(
        validate, recorder, threads=1, max_pending=10, max_pending_bytes=1 << 20,
        in_pool=lambda _: False,
    )  # fmt: skip
    step.submit(message(1))
    step.submit(message(2))
    recorder.rejecting = True
    step.poll()
    assert recorder.received == []
    recorder.rejecting = False
    poll_until(step, lambda: len(recorder.received) == 2, "both forwarded")
    assert recorder.payloads() == [100, 200]


# -- OrderedBatchStep -----------------------------------------------------------------------------


def test_arroyo_batch_step_commits_an_invalid_offset_past_its_unflushed_batch() -> None:
    """Why OrderedBatchStep exists: with Arroyo's BatchStep the filtered offset overtakes the
    messages still being batched."""
    recorder = Recorder()
    batch_step: BatchStep[int] = BatchStep(100, 60.0, recorder)
    batch_step.submit(message(1))
    batch_step.submit(filtered(2))
    assert recorder.committed() == 3  # offset 1 would be lost by a crash now


def test_ordered_batch_step_commits_an_invalid_offset_only_with_the_batch_before_it() -> None:
    recorder = Recorder()
    batch_step = OrderedBatchStep(3, 60.0, recorder)
    batch_step.submit(message(1))
    batch_step.submit(filtered(2))
    assert recorder.received == []
    batch_step.submit(message(3))
    batch_step.submit(message(4))
    batch_step.submit(message(5))  # the first batch is full: it goes on before 5 is added
    assert [[v.payload for v in m.payload] for m in recorder.received] == [[1, 3, 4]]
    assert recorder.committed() == 5
    batch_step.submit(filtered(6))  # joins the batch holding 5
    batch_step.close()
    batch_step.join()
    assert [[v.payload for v in m.payload] for m in recorder.received] == [[1, 3, 4], [5]]
    assert recorder.committed() == 7


def test_ordered_batch_step_forwards_a_filtered_offset_when_no_batch_is_pending() -> None:
    recorder = Recorder()
    batch_step = OrderedBatchStep(3, 60.0, recorder)
    batch_step.submit(filtered(1))
    assert recorder.committed() == 2


def test_ordered_batch_step_closes_a_batch_by_weight_and_by_time() -> None:
    recorder = Recorder()
    heavy = OrderedBatchStep(10, 60.0, recorder, compute_batch_size=lambda value: 6)
    heavy.submit(message(1))
    heavy.submit(message(2))
    heavy.submit(message(3))
    assert [[v.payload for v in m.payload] for m in recorder.received] == [[1, 2]]
    timed = OrderedBatchStep(10, 0.05, recorder)
    timed.submit(message(4))
    poll_until(timed, lambda: len(recorder.received) == 2, "the batch closed by time")
    assert recorder.committed() == 5


def test_ordered_batch_step_keeps_a_rejected_batch_and_rejects_until_it_goes() -> None:
    recorder = Recorder()
    batch_step = OrderedBatchStep(2, 60.0, recorder)
    batch_step.submit(message(1))
    batch_step.submit(message(2))
    recorder.rejecting = True
    with pytest.raises(MessageRejected):
        batch_step.submit(message(3))
    recorder.rejecting = False
    batch_step.submit(message(3))
    assert [[v.payload for v in m.payload] for m in recorder.received] == [[1, 2]]

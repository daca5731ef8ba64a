"""A rebalance while Arroyo's processor is paused by backpressure (docs/rebalancing.md,
Rebalancing while paused): nothing may be lost and no partition may stay paused.

Arroyo's processor pauses every partition once one message has been refused for
`BACKPRESSURE_THRESHOLD` seconds, and then polls to serve rebalances. When one comes it
rebuilds the chain and forgets the message it held and that it had paused; a message that
poll returned is dropped. With a protocol that keeps partitions across a rebalance (Kafka 4's
consumer protocol, the fleet's default) the held message was lost, the first message of a
new partition too, and the kept partitions stayed paused for good."""

from __future__ import annotations

import pytest
from arroyo.backends.kafka import KafkaPayload
from arroyo.commit import ONCE_PER_SECOND
from arroyo.processing import StreamProcessor, processor
from arroyo.types import Topic

from tests.support.confluent_stub import StubConfluent, configuration, with_stub
from tests.support.gated_strategy import Gate, GatedFactory
from workers.common.fetching_consumer import FetchingKafkaConsumer

TOPIC = "paused"
MESSAGES = {0: 5, 1: 5, 2: 5}


@pytest.fixture(autouse=True)
def pause_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Arroyo pauses after 5 s of refusals; the same path, without the wait.
    monkeypatch.setattr(processor, "BACKPRESSURE_THRESHOLD", 0.0)


def paused_member(stub: StubConfluent, gate: Gate) -> StreamProcessor[KafkaPayload]:
    worker = StreamProcessor(
        with_stub(FetchingKafkaConsumer(configuration()), stub),
        Topic(TOPIC),
        GatedFactory(gate),
        commit_policy=ONCE_PER_SECOND,
    )
    # The assignment, the first message (refused: the timer starts), refused again: paused.
    for _ in range(4):
        worker._run_once()
    assert stub.paused == {0, 1}
    return worker


def drain(worker: StreamProcessor[KafkaPayload], gate: Gate) -> None:
    gate.open = True
    for _ in range(100):
        worker._run_once()
    worker.signal_shutdown()
    worker.run()


@pytest.mark.parametrize(
    ("rebalance", "kept"),
    [("assign", [0, 1, 2]), ("revoke", [0])],
    ids=["a partition added", "a partition taken away"],
)
def test_a_rebalance_while_paused_loses_nothing_and_resumes_what_stays(
    rebalance: str, kept: list[int]
) -> None:
    stub = StubConfluent(TOPIC, MESSAGES, initial=[0, 1])
    gate = Gate()
    worker = paused_member(stub, gate)
    if rebalance == "assign":
        stub.schedule_assign([2])
    else:
        stub.schedule_revoke([1])
    worker._run_once()  # the paused processor polls and is rebalanced
    assert stub.paused == set()
    drain(worker, gate)
    expected = {(p, offset) for p in kept for offset in range(MESSAGES[p])}
    assert set(gate.accepted) == expected
    assert len(gate.accepted) == len(expected)  # and nothing twice
    assert {p: stub.committed_offsets.get(p) for p in kept} == {p: MESSAGES[p] for p in kept}


def test_without_a_rebalance_the_held_message_is_submitted_once_the_gate_opens() -> None:
    stub = StubConfluent(TOPIC, MESSAGES, initial=[0, 1])
    gate = Gate()
    worker = paused_member(stub, gate)
    drain(worker, gate)
    expected = {(p, offset) for p in (0, 1) for offset in range(MESSAGES[p])}
    assert sorted(gate.accepted) == sorted(expected)

"""A member paused by backpressure is rebalanced on the real local Kafka (consumer protocol):
every message is still processed and committed (docs/rebalancing.md, Rebalancing while
paused). Arroyo alone lost the message it held and left the partitions it kept paused."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from arroyo.commit import ONCE_PER_SECOND
from arroyo.processing import StreamProcessor, processor
from arroyo.types import Topic

from harness.kafka import make_topics, unique_name
from harness.waiting import wait_for
from tests.support.gated_strategy import Gate, GatedFactory
from tests.support.kafka import produce
from workers.common.fetching_consumer import FetchingKafkaConsumer
from workers.common.kafka_config import ConsumerOptions, consumer_configuration
from workers.common.kafka_offsets import committed_offsets, high_watermarks
from workers.common.settings import Settings

pytestmark = pytest.mark.integration

PARTITIONS = 4
MESSAGES = 200


class Member:
    """One group member, a `StreamProcessor` on the fleet's consumer, in a thread."""

    def __init__(self, settings: Settings, topic: str, group: str, gate: Gate) -> None:
        self.consumer = FetchingKafkaConsumer(
            consumer_configuration(settings, ConsumerOptions(group_id=group))
        )
        self.processor = StreamProcessor(
            self.consumer, Topic(topic), GatedFactory(gate), commit_policy=ONCE_PER_SECOND
        )
        self.thread = threading.Thread(target=self.processor.run, daemon=True)
        self.thread.start()

    def paused_partitions(self) -> int:
        try:
            return len(self.consumer.paused())
        except RuntimeError:  # the set changed while read from this thread; ask again
            return 0

    def stop(self) -> None:
        self.processor.signal_shutdown()
        self.thread.join(60)
        assert not self.thread.is_alive()


@pytest.fixture
def members() -> Iterator[list[Member]]:
    started: list[Member] = []
    yield started
    for member in started:
        if member.thread.is_alive():
            member.stop()


def test_a_member_rebalanced_while_paused_loses_nothing(
    monkeypatch: pytest.MonkeyPatch, members: list[Member]
) -> None:
    # Arroyo pauses after 5 s of refusals; the same path, without the wait.
    monkeypatch.setattr(processor, "BACKPRESSURE_THRESHOLD", 0.0)
    settings = Settings.from_env()
    topic, group = unique_name("paused-in"), unique_name("paused-group")
    make_topics(settings, topic, partitions=PARTITIONS)
    produce(settings, topic, ((b"k%d" % index, b"v") for index in range(MESSAGES)))

    held = Gate()
    members.append(Member(settings, topic, group, held))
    wait_for(lambda: members[0].paused_partitions() == PARTITIONS, 30, "A paused")
    open_gate = Gate()
    open_gate.open = True
    members.append(Member(settings, topic, group, open_gate))
    wait_for(lambda: open_gate.accepted, 30, "B processing the partitions it took")
    held.open = True

    everything = {
        (partition, offset)
        for partition, high in high_watermarks(settings, topic).items()
        for offset in range(high)
    }
    wait_for(
        lambda: set(held.accepted) | set(open_gate.accepted) == everything,
        60,
        "every message processed by one member or the other",
    )
    for member in members:
        member.stop()
    assert committed_offsets(settings, group, topic) == high_watermarks(settings, topic)

"""A member that closes while partitions are on their way to it (another member left, and it
has not polled since) closes on the real local Kafka (consumer protocol; docs/rebalancing.md,
Closing). Arroyo's consumer read the committed offsets of those partitions inside `close()`,
and librdkafka, closing, never answered: `close()` hung for good, graceful or not."""

from __future__ import annotations

import threading

import pytest
from arroyo.types import Partition, Topic

from harness.kafka import make_topics, unique_name
from harness.waiting import wait_for
from workers.common.fetching_consumer import FetchingKafkaConsumer
from workers.common.kafka_config import ConsumerOptions, consumer_configuration
from workers.common.settings import Settings
from workers.groups.inspect import describe_group

pytestmark = pytest.mark.integration

PARTITIONS = 4


class Member:
    def __init__(self, settings: Settings, topic: str, group: str) -> None:
        self.consumer = FetchingKafkaConsumer(
            consumer_configuration(settings, ConsumerOptions(group_id=group))
        )
        self.partitions: set[Partition] = set()
        self.consumer.subscribe(
            [Topic(topic)],
            on_assign=lambda assigned: self.partitions.update(assigned),
            on_revoke=lambda revoked: self.partitions.difference_update(revoked),
        )

    def holds(self, count: int) -> bool:
        self.consumer.poll(0.1)
        return len(self.partitions) == count


def test_a_member_closes_while_partitions_are_on_their_way_to_it() -> None:
    settings = Settings.from_env()
    topic, group = unique_name("closing-in"), unique_name("closing-group")
    make_topics(settings, topic, partitions=PARTITIONS)
    stays = Member(settings, topic, group)
    wait_for(lambda: stays.holds(PARTITIONS), 30, "the first member to hold every partition")
    leaves = Member(settings, topic, group)
    wait_for(
        # Both poll on every try (`&`, not `and`): each must serve its own rebalance.
        lambda: stays.holds(PARTITIONS // 2) & leaves.holds(PARTITIONS // 2),
        30,
        "the second member to take half of them",
    )
    leaves.consumer.close()
    # From here `stays` does not poll: the broker hands it the partitions back, and they wait
    # in librdkafka for a poll that never comes.
    wait_for(
        lambda: (
            [len(member.assignment) for member in describe_group(settings, group, [topic]).members]
            == [PARTITIONS]
        ),
        30,
        "the broker to assign every partition to the member left",
    )
    closing = threading.Thread(target=stays.consumer.close, daemon=True)
    closing.start()
    closing.join(30)
    assert not closing.is_alive(), "close() hung on the partitions assigned to it"
    assert stays.consumer.closed
    # Arroyo never saw them: its partitions were the ones it held, and they were revoked.
    assert stays.partitions == set()

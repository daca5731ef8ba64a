"""The broker faults' handle on the chaos stack's Kafka (`workers.stack.kafka_cluster`):
kill -9 a broker and start it again, pause it (SIGSTOP) and resume it (SIGCONT); each call
returns once the fault has taken effect (a started broker answers and is registered).

`target_broker` picks the broker a fault hits: the leader of partition 0 of the scenario's
first input topic, so the fault moves (on one broker: stops) a partition the workers read.
On a single broker any broker fault is a full Kafka outage.
"""

from __future__ import annotations

from typing import Protocol

from confluent_kafka.admin import AdminClient

from bench.chaos.stack import ChaosStack
from workers.common.kafka_config import admin_configuration
from workers.stack.kafka_cluster import KafkaCluster


class Brokers(Protocol):
    def kill(self, node_id: int) -> None: ...

    def start(self, node_id: int) -> None: ...

    def pause(self, node_id: int) -> None: ...

    def resume(self, node_id: int) -> None: ...


class ClusterBrokers:
    def __init__(self, stack: ChaosStack) -> None:
        self.__cluster = KafkaCluster(stack.settings)

    def kill(self, node_id: int) -> None:
        self.__cluster.kill_broker(node_id)

    def start(self, node_id: int) -> None:
        self.__cluster.start_broker(node_id)

    def pause(self, node_id: int) -> None:
        self.__cluster.pause_broker(node_id)

    def resume(self, node_id: int) -> None:
        self.__cluster.resume_broker(node_id)


def brokers_of(stack: ChaosStack) -> Brokers:
    return ClusterBrokers(stack)


def target_broker(stack: ChaosStack, topic: str) -> int:
    """The leader of `topic`'s partition 0."""
    admin = AdminClient(admin_configuration(stack.settings))
    metadata = admin.list_topics(topic, timeout=10)
    leader: int = metadata.topics[topic].partitions[0].leader
    return leader

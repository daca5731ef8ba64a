"""The broker faults' handle on the stack's Kafka: list the brokers, kill -9 one, start it
again, pause it (SIGSTOP) and resume it (SIGCONT).

`SingleBroker` drives the stack's one broker (`workers.stack.kafka.KafkaService`): killing it
is a full Kafka outage, which every worker must wait out. `target_broker` picks the broker a
fault hits: the leader of partition 0 of the scenario's first input topic.
"""

from __future__ import annotations

import os
import signal
from typing import Protocol

from confluent_kafka.admin import AdminClient

from bench.chaos.stack import ChaosStack
from workers.common.kafka_config import admin_configuration
from workers.stack.kafka import KafkaService
from workers.stack.lifecycle import wait_until
from workers.stack.paths import StackPaths
from workers.stack.pids import pid_alive

DEATH_TIMEOUT_SECONDS = 30.0


class Brokers(Protocol):
    def node_ids(self) -> list[int]: ...

    def kill(self, node_id: int) -> None:
        """kill -9 the broker; returns once its process is gone."""
        ...

    def start(self, node_id: int) -> None:
        """Start the (killed) broker; returns once it answers."""
        ...

    def pause(self, node_id: int) -> None:
        """SIGSTOP: the process stays, its sockets stay open, nothing answers."""
        ...

    def resume(self, node_id: int) -> None:
        """SIGCONT."""
        ...


class SingleBroker:
    NODE_ID = 1

    def __init__(self, stack: ChaosStack) -> None:
        self.__stack = stack
        self.__service = KafkaService(stack.settings, StackPaths.under(stack.root))

    def node_ids(self) -> list[int]:
        return [self.NODE_ID]

    def __pid(self) -> int:
        pid = self.__service.own_pid()
        if pid is None:
            raise RuntimeError("the chaos stack's Kafka is not running")
        return pid

    def kill(self, node_id: int) -> None:
        assert node_id == self.NODE_ID
        pid = self.__pid()
        os.kill(pid, signal.SIGKILL)
        if not wait_until(lambda: not pid_alive(pid), DEATH_TIMEOUT_SECONDS):
            raise RuntimeError(f"Kafka (pid {pid}) still runs after SIGKILL")

    def start(self, node_id: int) -> None:
        assert node_id == self.NODE_ID
        self.__stack.up()

    def pause(self, node_id: int) -> None:
        assert node_id == self.NODE_ID
        os.kill(self.__pid(), signal.SIGSTOP)

    def resume(self, node_id: int) -> None:
        assert node_id == self.NODE_ID
        os.kill(self.__pid(), signal.SIGCONT)


def brokers_of(stack: ChaosStack) -> Brokers:
    return SingleBroker(stack)


def target_broker(stack: ChaosStack, topic: str) -> int:
    """The leader of `topic`'s partition 0: its loss moves (or stops) that partition."""
    admin = AdminClient(admin_configuration(stack.settings))
    metadata = admin.list_topics(topic, timeout=10)
    leader: int = metadata.topics[topic].partitions[0].leader
    return leader

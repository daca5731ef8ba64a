"""Faults for one broker of the stack's Kafka: kill, stop, start, pause and resume it.

For fault-injection suites and tests (docs/operations.md, A 3-broker cluster). Works on
the stack of any state dir: `KafkaCluster(settings)` finds the brokers the way
`workers stack` does (the recorded layout, pid files per node, node 1's port first in
`KAFKA_BOOTSTRAP_SERVERS`). Every call waits until the fault has taken effect:

    cluster = KafkaCluster(settings)
    victim = cluster.brokers()[1]          # Broker(node_id=2, port=19094, pid=..., ...)
    cluster.kill_broker(victim.node_id)    # SIGKILL; returns once the process is gone
    cluster.start_broker(victim.node_id)   # returns once it answers and is registered
    cluster.wait_fully_replicated(60.0)    # every replica back in sync
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from confluent_kafka.admin import AdminClient

from workers.common.settings import Settings
from workers.stack.errors import StackError
from workers.stack.kafka import STOP_TIMEOUT, KafkaService
from workers.stack.kafka_layout import KafkaLayout, layout_for
from workers.stack.lifecycle import terminate, wait_until
from workers.stack.locks import stack_lock
from workers.stack.logs import tail
from workers.stack.paths import StackPaths
from workers.stack.pids import pid_alive

log = logging.getLogger(__name__)
_client_log = logging.getLogger(f"{__name__}.client")

BrokerState = Literal["running", "paused", "down"]
SIGNAL_TIMEOUT = 10.0


@dataclass(frozen=True)
class Broker:
    """One broker as its process shows it (not whether it answers: see `start_broker`)."""

    node_id: int
    name: str
    port: int
    controller_port: int
    pid: int | None
    state: BrokerState

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _paused(pid: int) -> bool:
    """True while `pid` is stopped by a signal (state `T` in procfs)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["T"]


class KafkaCluster:
    """The brokers of the stack in `settings.state_dir`, one fault at a time."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.layout: KafkaLayout = layout_for(settings)
        self._services = {
            node.node_id: KafkaService(settings, self.layout, node) for node in self.layout.nodes
        }

    @property
    def bootstrap_servers(self) -> str:
        """Every broker, for clients that must survive the loss of any one of them."""
        return self.layout.bootstrap_servers

    def brokers(self) -> list[Broker]:
        return [self.broker(node_id) for node_id in self._services]

    def broker(self, node_id: int) -> Broker:
        service = self._service(node_id)
        node = service.node
        pid = service.own_pid()
        state: BrokerState = "down" if pid is None else "paused" if _paused(pid) else "running"
        return Broker(node.node_id, node.name, node.port, node.controller_port, pid, state)

    def _service(self, node_id: int) -> KafkaService:
        node = self.layout.node(node_id)  # A StackError naming the nodes when unknown.
        return self._services[node.node_id]

    def _pid(self, node_id: int) -> int:
        broker = self.broker(node_id)
        if broker.pid is None:
            raise StackError(f"{broker.name} is not running")
        return broker.pid

    # --- faults ---

    def kill_broker(self, node_id: int, timeout: float = SIGNAL_TIMEOUT) -> int:
        """SIGKILL the broker (a crashed node) and wait until its process is gone."""
        pid = self._pid(node_id)
        log.info("killing Kafka node %d (pid %d)", node_id, pid)
        os.kill(pid, signal.SIGKILL)
        if not wait_until(lambda: not pid_alive(pid), timeout):
            raise StackError(
                f"Kafka node {node_id} (pid {pid}) still runs {timeout:.0f} s after SIGKILL"
            )
        return pid

    def stop_broker(self, node_id: int, timeout: float = STOP_TIMEOUT) -> int:
        """Stop the broker gracefully (SIGTERM: controlled shutdown), as a rolling restart does."""
        pid = self._pid(node_id)
        terminate(pid, name=f"Kafka node {node_id}", timeout=timeout)
        return pid

    def pause_broker(self, node_id: int, timeout: float = SIGNAL_TIMEOUT) -> int:
        """SIGSTOP the broker (a hung node: its sockets stay open, nothing answers)."""
        pid = self._pid(node_id)
        log.info("pausing Kafka node %d (pid %d)", node_id, pid)
        os.kill(pid, signal.SIGSTOP)
        if not wait_until(lambda: _paused(pid) or not pid_alive(pid), timeout):
            raise StackError(f"Kafka node {node_id} (pid {pid}) did not stop on SIGSTOP")
        return pid

    def resume_broker(self, node_id: int, timeout: float = SIGNAL_TIMEOUT) -> int:
        """SIGCONT a paused broker and wait until it runs again."""
        pid = self._pid(node_id)
        log.info("resuming Kafka node %d (pid %d)", node_id, pid)
        os.kill(pid, signal.SIGCONT)
        if not wait_until(lambda: not _paused(pid), timeout):
            raise StackError(f"Kafka node {node_id} (pid {pid}) did not continue on SIGCONT")
        return pid

    def start_broker(self, node_id: int, timeout: float | None = None) -> Broker:
        """Start a broker that is down and wait until it answers and is registered again.

        A broker that runs already is only waited for; a paused one is an error.
        """
        service = self._service(node_id)
        paths = StackPaths.under(self._settings.state_dir)
        with stack_lock(paths, log.info):
            broker = self.broker(node_id)
            if broker.state == "paused":
                raise StackError(f"{broker.name} is paused; resume it instead")
            if broker.state == "down":
                service.prepare(log.info)
                service.launch()
        deadline = time.monotonic() + (service.ready_timeout if timeout is None else timeout)
        while (problem := service.poll_ready()) is not None:
            if time.monotonic() >= deadline:
                raise StackError(
                    f"{service.name} is not ready ({problem}); "
                    f"the last lines of {service.log_file}:\n{tail(service.log_file)}"
                )
            time.sleep(0.2)
        return self.broker(node_id)

    # --- replication ---

    def under_replicated(self, topics: list[str] | None = None) -> list[tuple[str, int]]:
        """`(topic, partition)` of every partition whose in-sync replicas are not all of them."""
        admin = AdminClient(
            {**self._settings.kafka_client_config(), "bootstrap.servers": self.bootstrap_servers},
            logger=_client_log,
        )
        metadata = admin.list_topics(timeout=10.0)
        lagging: list[tuple[str, int]] = []
        for name, topic in sorted(metadata.topics.items()):
            if topics is not None and name not in topics:
                continue
            for partition in topic.partitions.values():
                if partition.error is not None or set(partition.isrs) != set(partition.replicas):
                    lagging.append((name, partition.id))
        return lagging

    def wait_fully_replicated(self, timeout: float, topics: list[str] | None = None) -> float:
        """Wait until every replica of `topics` (default: all) is in sync; the seconds it took."""
        started = time.monotonic()
        if not wait_until(lambda: not self.under_replicated(topics), timeout, interval=0.5):
            lagging = self.under_replicated(topics)
            raise StackError(
                f"{len(lagging)} partitions still under-replicated after {timeout:.0f} s: "
                + ", ".join(f"{name}[{partition}]" for name, partition in lagging[:10])
            )
        return time.monotonic() - started

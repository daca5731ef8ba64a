"""Where the stack's Kafka nodes live and how each is configured: one broker, or three.

One broker (the default) is a single KRaft node, broker and controller in one JVM, with its
files straight under `<state dir>/kafka` (`server.properties`, `data/`, `cluster.id`),
listening on 19092 (clients) and 19093 (controller).

Three brokers (`workers stack up --brokers 3`) are three combined broker+controller nodes,
node ids 1-3, whose controllers form the KRaft quorum (three voters, a static
`controller.quorum.voters`). Combined nodes rather than three brokers plus a separate
three-controller quorum, because:

- it is three JVMs instead of six on a small machine (each gets `-Xmx512m`): the whole
  cluster starts in about the time one broker does;
- a quorum of three still survives the loss of any one node, so killing, pausing or
  restarting one node (docs/operations.md, A 3-broker cluster) keeps the cluster writable
  for `acks=all` producers with `min.insync.replicas=2`; and when the node is the active
  controller, the fault exercises a controller failover too, as losing a pod of a small
  production cluster does. (Kafka recommends dedicated controllers for large production
  clusters; that changes how many machines there are, not what a client sees.)

The cluster's files are under `<state dir>/kafka/cluster-3` (`cluster.id`, and `node-N/`
with `server.properties` and `data/` per node), apart from the single broker's, so switching
layouts never mixes their data: each keeps its own topics for when it runs again. Ports
come from `workers.common.local_kafka`: node N listens on base + 2 (N - 1) and the port
after it. Internal topics (consumer offsets, transaction state, share-group state) and the
default for new topics are replicated by `workers.common.replication`: 3 copies, 2 in sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workers.common.local_kafka import (
    LayoutError,
    broker_port,
    check_brokers,
    controller_port,
    recorded_brokers,
)
from workers.common.replication import replication_for
from workers.common.settings import Settings
from workers.stack.errors import StackError
from workers.stack.paths import StackPaths
from workers.stack.service import LOCALHOST

# Chunks are up to 8 MiB; leave room for headers and batch overhead.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
GROUP_FAILURE_DETECTION = {
    "group.consumer.session.timeout.ms": "6000",
    "group.consumer.min.session.timeout.ms": "3000",
    "group.consumer.heartbeat.interval.ms": "500",
    "group.consumer.min.heartbeat.interval.ms": "250",
    # How often the broker looks for transactions past their timeout (default 10 s): the
    # pending offsets of a killed transactional member block its partitions until then.
    "transaction.abort.timed.out.transaction.cleanup.interval.ms": "1000",
}
_COMMON_JVM_OPTIONS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Dorg.slf4j.simpleLogger.showDateTime=true",
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSSXXX",
)
SINGLE_NODE_JVM_OPTIONS = ("-Xms256m", "-Xmx1g", *_COMMON_JVM_OPTIONS)
CLUSTER_NODE_JVM_OPTIONS = ("-Xms128m", "-Xmx512m", *_COMMON_JVM_OPTIONS)


def parse_bootstrap(servers: str) -> list[tuple[str, int]]:
    """The `(host, port)` pairs of a bootstrap list (`[v6]:port` allowed)."""
    parsed: list[tuple[str, int]] = []
    for entry in servers.split(","):
        address = entry.strip()
        if not address:
            continue
        address = address.rpartition("://")[2]
        host, separator, port = address.rpartition(":")
        if not separator or not port.isdigit():
            raise StackError(f"KAFKA_BOOTSTRAP_SERVERS: expected host:port, got {entry.strip()!r}")
        parsed.append((host.strip("[]") or LOCALHOST, int(port)))
    if not parsed:
        raise StackError("KAFKA_BOOTSTRAP_SERVERS is empty")
    return parsed


@dataclass(frozen=True)
class KafkaNode:
    """One Kafka process of the stack: its node id, ports and files."""

    node_id: int
    name: str
    port: int
    controller_port: int
    directory: Path
    pid_file: Path
    log_file: Path

    @property
    def config(self) -> Path:
        return self.directory / "server.properties"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.port}"


@dataclass(frozen=True)
class KafkaLayout:
    """Every node of the stack's Kafka and what they share (cluster id, jars, JVM options)."""

    brokers: int
    directory: Path
    libs: Path
    nodes: tuple[KafkaNode, ...]
    jvm_options: tuple[str, ...]

    @property
    def cluster_id_file(self) -> Path:
        return self.directory / "cluster.id"

    @property
    def bootstrap_servers(self) -> str:
        return ",".join(node.address for node in self.nodes)

    @property
    def quorum_voters(self) -> str:
        return ",".join(f"{node.node_id}@{LOCALHOST}:{node.controller_port}" for node in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        known = ", ".join(str(node.node_id) for node in self.nodes)
        raise StackError(f"the stack's Kafka has no node {node_id} (its nodes: {known})")


def kafka_layout(paths: StackPaths, base_port: int, brokers: int) -> KafkaLayout:
    try:
        check_brokers(brokers)
    except LayoutError as error:
        raise StackError(str(error)) from None
    if brokers == 1:
        single = KafkaNode(
            node_id=1,
            name="kafka",
            port=base_port,
            controller_port=controller_port(base_port, 1),
            directory=paths.kafka,
            pid_file=paths.pid_file("kafka"),
            log_file=paths.log_file("kafka"),
        )
        return KafkaLayout(1, paths.kafka, paths.kafka / "libs", (single,), SINGLE_NODE_JVM_OPTIONS)
    directory = paths.kafka / f"cluster-{brokers}"
    nodes = tuple(
        KafkaNode(
            node_id=node_id,
            name=f"kafka-{node_id}",
            port=broker_port(base_port, node_id),
            controller_port=controller_port(base_port, node_id),
            directory=directory / f"node-{node_id}",
            pid_file=paths.pid_file(f"kafka-{node_id}"),
            log_file=paths.log_file(f"kafka-{node_id}"),
        )
        for node_id in range(1, brokers + 1)
    )
    return KafkaLayout(brokers, directory, paths.kafka / "libs", nodes, CLUSTER_NODE_JVM_OPTIONS)


def layout_for(settings: Settings, brokers: int | None = None) -> KafkaLayout:
    """The layout of the stack in `settings.state_dir`: `brokers`, else the recorded count.

    The first address of `KAFKA_BOOTSTRAP_SERVERS` is node 1's port, the base of the others.
    """
    if brokers is None:
        try:
            brokers = recorded_brokers(settings.state_dir)
        except LayoutError as error:
            raise StackError(str(error)) from None
    base_port = parse_bootstrap(settings.kafka_bootstrap_servers)[0][1]
    return kafka_layout(StackPaths.under(settings.state_dir), base_port, brokers)


def server_properties(layout: KafkaLayout, node: KafkaNode, *, partitions: int) -> str:
    replication = replication_for(layout.brokers)
    factor = str(replication.factor)
    min_isr = str(replication.min_insync_replicas)
    settings = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": layout.quorum_voters,
        "listeners": (
            f"PLAINTEXT://{LOCALHOST}:{node.port},CONTROLLER://{LOCALHOST}:{node.controller_port}"
        ),
        "advertised.listeners": f"PLAINTEXT://{LOCALHOST}:{node.port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(node.data),
        "num.partitions": str(partitions),
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": factor,
        "transaction.state.log.replication.factor": factor,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": factor,
        "share.coordinator.state.topic.min.isr": min_isr,
        "default.replication.factor": factor,
        "min.insync.replicas": min_isr,
        "group.initial.rebalance.delay.ms": "0",
        # Consumer group protocol (KIP-848) failure detection: a member that stops
        # heartbeating (kill -9, a lost node) loses its partitions after 6 s instead of 45 s,
        # and survivors hear of new assignments within one heartbeat (docs/rebalancing.md).
        **GROUP_FAILURE_DETECTION,
        "message.max.bytes": str(MAX_MESSAGE_BYTES),
        "replica.fetch.max.bytes": str(MAX_MESSAGE_BYTES),
    }
    lines = ["# Written by `workers stack up`; edits are overwritten on the next run."]
    lines += [f"{key}={value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"

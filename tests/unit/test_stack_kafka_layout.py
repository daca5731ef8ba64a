"""The stack's Kafka layouts: one broker as always, or a 3-node KRaft cluster."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest

from workers.common.local_kafka import (
    LayoutError,
    brokers_file,
    local_bootstrap_servers,
    record_brokers,
    recorded_brokers,
)
from workers.common.replication import Replication, replication_for
from workers.common.settings import (
    DEFAULT_DATABASE_URL,
    DEFAULT_KAFKA_PORT,
    DEFAULT_REDIS_URL,
    Settings,
)
from workers.stack.errors import StackError
from workers.stack.kafka_layout import (
    CLUSTER_NODE_JVM_OPTIONS,
    SINGLE_NODE_JVM_OPTIONS,
    KafkaLayout,
    kafka_layout,
    layout_for,
    server_properties,
)
from workers.stack.paths import StackPaths

# What `workers stack up` writes for its single broker: what it wrote before clusters existed,
# on the ports of stop 30 (docs/operations.md, Local stack).
SINGLE_NODE_PROPERTIES = """\
# Written by `workers stack up`; edits are overwritten on the next run.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:19093
listeners=PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093
advertised.listeners=PLAINTEXT://127.0.0.1:19092
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={state}/kafka/data
num.partitions=4
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
group.consumer.session.timeout.ms=6000
group.consumer.min.session.timeout.ms=3000
group.consumer.heartbeat.interval.ms=500
group.consumer.min.heartbeat.interval.ms=250
transaction.abort.timed.out.transaction.cleanup.interval.ms=1000
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
"""


def _properties(layout: KafkaLayout, node_id: int) -> dict[str, str]:
    text = server_properties(layout, layout.node(node_id), partitions=4)
    pairs = (line.split("=", 1) for line in text.splitlines() if not line.startswith("#"))
    return dict((key, value) for key, value in pairs)


def test_one_broker_is_the_single_node_of_old(tmp_path: Path) -> None:
    layout = kafka_layout(StackPaths.under(tmp_path), 19092, 1)
    [node] = layout.nodes
    assert (node.name, node.node_id, node.port, node.controller_port) == ("kafka", 1, 19092, 19093)
    assert node.config == tmp_path / "kafka" / "server.properties"
    assert node.pid_file == tmp_path / "run" / "kafka.pid"
    assert node.log_file == tmp_path / "logs" / "kafka.log"
    assert layout.cluster_id_file == tmp_path / "kafka" / "cluster.id"
    assert layout.jvm_options == SINGLE_NODE_JVM_OPTIONS
    assert "-Xmx1g" in layout.jvm_options
    assert layout.bootstrap_servers == "127.0.0.1:19092"
    text = server_properties(layout, node, partitions=4)
    assert text == SINGLE_NODE_PROPERTIES.format(state=tmp_path)


def test_three_brokers_are_three_voters_with_their_own_ports_and_files(tmp_path: Path) -> None:
    layout = kafka_layout(StackPaths.under(tmp_path), 19092, 3)
    assert [node.name for node in layout.nodes] == ["kafka-1", "kafka-2", "kafka-3"]
    assert [(node.port, node.controller_port) for node in layout.nodes] == [
        (19092, 19093),
        (19094, 19095),
        (19096, 19097),
    ]
    assert layout.bootstrap_servers == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    assert layout.jvm_options == CLUSTER_NODE_JVM_OPTIONS
    assert "-Xmx512m" in layout.jvm_options
    cluster = tmp_path / "kafka" / "cluster-3"
    assert layout.cluster_id_file == cluster / "cluster.id"
    voters = "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
    for node in layout.nodes:
        properties = _properties(layout, node.node_id)
        assert properties["node.id"] == str(node.node_id)
        assert properties["process.roles"] == "broker,controller"
        assert properties["controller.quorum.voters"] == voters
        assert properties["listeners"] == (
            f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
        )
        assert properties["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{node.port}"
        assert properties["log.dirs"] == str(cluster / f"node-{node.node_id}" / "data")
        assert node.config == cluster / f"node-{node.node_id}" / "server.properties"
        assert node.pid_file == tmp_path / "run" / f"kafka-{node.node_id}.pid"
        assert node.log_file == tmp_path / "logs" / f"kafka-{node.node_id}.log"


def test_three_brokers_replicate_every_internal_topic_three_times(tmp_path: Path) -> None:
    layout = kafka_layout(StackPaths.under(tmp_path), 19092, 3)
    properties = _properties(layout, 2)
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "share.coordinator.state.topic.replication.factor",
        "default.replication.factor",
    ):
        assert properties[key] == "3", key
    for key in (
        "transaction.state.log.min.isr",
        "share.coordinator.state.topic.min.isr",
        "min.insync.replicas",
    ):
        assert properties[key] == "2", key


def test_ports_follow_the_first_bootstrap_address(tmp_path: Path) -> None:
    settings = Settings(
        kafka_bootstrap_servers=local_bootstrap_servers(42100, 3), state_dir=tmp_path
    )
    layout = layout_for(settings, 3)
    assert [node.address for node in layout.nodes] == [
        "127.0.0.1:42100",
        "127.0.0.1:42102",
        "127.0.0.1:42104",
    ]
    assert layout.quorum_voters == "1@127.0.0.1:42101,2@127.0.0.1:42103,3@127.0.0.1:42105"
    with pytest.raises(StackError, match="no node 4"):
        layout.node(4)


def test_only_one_or_three_brokers(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="1 or 3 Kafka brokers, not 2"):
        kafka_layout(StackPaths.under(tmp_path), 19092, 2)
    with pytest.raises(LayoutError):
        record_brokers(tmp_path, 5)
    assert not brokers_file(tmp_path).exists()


def test_the_broker_count_is_recorded_in_the_state_dir(tmp_path: Path) -> None:
    assert recorded_brokers(tmp_path) == 1
    record_brokers(tmp_path, 3)
    assert brokers_file(tmp_path).read_text() == "3\n"
    assert recorded_brokers(tmp_path) == 3
    assert layout_for(Settings(state_dir=tmp_path)).brokers == 3
    brokers_file(tmp_path).write_text("seven\n")
    with pytest.raises(LayoutError, match="workers stack up --brokers"):
        recorded_brokers(tmp_path)


def test_settings_default_to_every_broker_of_the_recorded_layout(tmp_path: Path) -> None:
    env = {"WORKERS_STATE_DIR": str(tmp_path)}
    assert Settings.from_env(env).kafka_bootstrap_servers == "127.0.0.1:19092"
    record_brokers(tmp_path, 3)
    settings = Settings.from_env(env)
    assert settings.kafka_bootstrap_servers == ("127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096")
    assert settings.external_services == frozenset()
    explicit = Settings.from_env({**env, "KAFKA_BOOTSTRAP_SERVERS": "k:9092"})
    assert explicit.kafka_bootstrap_servers == "k:9092"


@pytest.mark.parametrize(
    ("brokers", "factor", "expected"),
    [
        (1, None, Replication(1, 1)),
        (2, None, Replication(2, 1)),
        (3, None, Replication(3, 2)),
        (6, None, Replication(3, 2)),
        (0, None, Replication(1, 1)),
        (1, 3, Replication(3, 2)),
        (3, 1, Replication(1, 1)),
        (3, 2, Replication(2, 1)),
        (5, 4, Replication(4, 2)),
    ],
)
def test_replication_follows_the_cluster_size_unless_given(
    brokers: int, factor: int | None, expected: Replication
) -> None:
    assert replication_for(brokers, factor) == expected


def _ephemeral_range() -> tuple[int, int]:
    """This machine's range for outgoing connections' ports, Linux's default without procfs."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except OSError:
        return 32768, 60999
    return int(low), int(high)


def test_default_ports_are_outside_the_ephemeral_range(tmp_path: Path) -> None:
    # An outgoing connection may take any port in that range, so a server restarting on one
    # can find it taken (docs/operations.md, Local stack).
    layout = kafka_layout(StackPaths.under(tmp_path), DEFAULT_KAFKA_PORT, 3)
    ports = {
        *(node.port for node in layout.nodes),
        *(node.controller_port for node in layout.nodes),
        urlsplit(DEFAULT_DATABASE_URL).port,
        urlsplit(DEFAULT_REDIS_URL).port,
    }
    assert len(ports) == 8
    for low, high in {_ephemeral_range(), (32768, 60999)}:
        inside = sorted(p for p in ports if p is not None and low <= p <= high)
        assert inside == [], f"ports {inside} lie in the ephemeral range {low}-{high}"

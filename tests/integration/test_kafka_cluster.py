"""`workers stack up --brokers 3`: a 3-broker KRaft cluster that survives the loss of one.

The cluster is this module's own: its own state dir (tmp) and ports (a free block below
the ephemeral range), PostgreSQL and Redis external (the shared stack's, health-checked
only). The shared stack on 19092 is never touched. Every JVM started here is stopped at
the end, killed if `workers stack down` fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.admin._metadata import ClusterMetadata

from harness.kafka import make_topics, unique_name
from harness.ports import free_port_block
from harness.waiting import wait_for
from workers.cli import make_cli
from workers.common.kafka_config import admin_configuration, producer_configuration
from workers.common.local_kafka import local_bootstrap_servers
from workers.common.registry import load_registry
from workers.common.settings import Settings
from workers.common.topics import fleet_topics
from workers.fleet import FLEET_REGISTRY_LOADER
from workers.stack import stack_down
from workers.stack.cli import stack
from workers.stack.kafka_cluster import KafkaCluster
from workers.stack.lifecycle import wait_until
from workers.stack.pids import pid_alive

pytestmark = pytest.mark.integration

PORTS_PER_CLUSTER = 6  # Three brokers, each with its controller port.
# Kafka fences a broker that stopped heartbeating after broker.session.timeout.ms (9 s).
FAILOVER_DEADLINE = 60.0
MESSAGES = 200


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Three brokers of `workers stack up --brokers 3` in a state dir of their own."""
    shared = Settings.from_env()
    settings = Settings(
        kafka_bootstrap_servers=local_bootstrap_servers(free_port_block(PORTS_PER_CLUSTER), 3),
        database_url=shared.database_url,
        redis_url=shared.redis_url,
        state_dir=tmp_path_factory.mktemp("kafka-cluster"),
        external_services=frozenset({"postgres", "redis"}),
    )
    try:
        result = CliRunner().invoke(stack, ["up", "--brokers", "3"], obj=settings)
        assert result.exit_code == 0, result.output
        yield settings
    finally:
        _stop_everything(settings)


def _stop_everything(settings: Settings) -> None:
    """`workers stack down`, and SIGKILL for any broker still there (even a paused one)."""
    with contextlib.suppress(Exception):
        stack_down(settings, lambda line: None)
    for broker in KafkaCluster(settings).brokers():
        if broker.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(broker.pid, signal.SIGKILL)


def _env(settings: Settings) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "WORKERS_STATE_DIR": str(settings.state_dir),
    }


def test_status_shows_each_broker_with_its_port_and_pid(cluster: Settings) -> None:
    brokers = KafkaCluster(cluster).brokers()
    assert [(broker.node_id, broker.state) for broker in brokers] == [
        (1, "running"),
        (2, "running"),
        (3, "running"),
    ]
    result = CliRunner().invoke(stack, ["status"], obj=cluster)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for broker in brokers:
        [line] = [line for line in lines if line.startswith(f"{broker.name} ")]
        assert line.split()[1:3] == ["running", broker.address], line
        assert f"(pid {broker.pid})" in line
    assert lines[-1].endswith(f"KAFKA_BOOTSTRAP_SERVERS={cluster.kafka_bootstrap_servers}")
    # A plain `up` sees the recorded cluster and leaves it running.
    again = CliRunner().invoke(stack, ["up"], obj=cluster)
    assert again.exit_code == 0, again.output
    assert again.output.count("already running") == 3


def test_topics_create_replicates_three_times_with_two_in_sync(cluster: Settings) -> None:
    result = CliRunner().invoke(
        make_cli(FLEET_REGISTRY_LOADER), ["topics", "create"], env=_env(cluster)
    )
    assert result.exit_code == 0, result.output
    names = [spec.name for spec in fleet_topics(load_registry(FLEET_REGISTRY_LOADER), 4)]
    for name in names:
        assert f"{name} " in result.output
    assert result.output.count("replication=3") == len(names), result.output
    admin = AdminClient(admin_configuration(cluster))

    def every_topic_known() -> ClusterMetadata | None:
        # The controller has created them; the broker answering this request may learn of
        # them a moment later (brokers follow the metadata log on their own).
        metadata = admin.list_topics(timeout=10)
        return metadata if all(name in metadata.topics for name in names) else None

    metadata = wait_for(every_topic_known, timeout=30, what="every fleet topic in the metadata")
    for name in names:
        partitions = metadata.topics[name].partitions.values()
        assert {len(partition.replicas) for partition in partitions} == {3}, name
        assert {len(partition.isrs) for partition in partitions} == {3}, name
    configs = admin.describe_configs(
        [ConfigResource(ConfigResource.Type.TOPIC, name) for name in names]
    )
    for resource, future in configs.items():
        assert future.result()["min.insync.replicas"].value == "2", resource
    [broker_future] = admin.describe_configs(
        [ConfigResource(ConfigResource.Type.BROKER, "1")]
    ).values()
    broker = broker_future.result()
    assert broker["offsets.topic.replication.factor"].value == "3"
    assert broker["transaction.state.log.replication.factor"].value == "3"
    assert broker["transaction.state.log.min.isr"].value == "2"
    assert broker["share.coordinator.state.topic.replication.factor"].value == "3"


def _produce(settings: Settings, topic: str, first: int, count: int) -> None:
    """Produce `count` numbered messages with acks=all; every one must be acknowledged."""
    errors: list[KafkaError] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            errors.append(error)

    producer = Producer(producer_configuration(settings, "cluster-test"))
    for number in range(first, first + count):
        producer.produce(topic, str(number).encode(), on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(FAILOVER_DEADLINE) == 0, "messages still unacknowledged"
    assert errors == []


def _read_all(settings: Settings, topic: str, partitions: int, expected: int) -> set[int]:
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": unique_name("cluster-read"),
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.assign([TopicPartition(topic, partition, 0) for partition in range(partitions)])
    seen: set[int] = set()
    deadline = time.monotonic() + FAILOVER_DEADLINE
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                seen.add(int(message.value() or b"-1"))
    finally:
        consumer.close()
    return seen


def _leader_of_partition_0(settings: Settings, topic: str) -> int:
    metadata = AdminClient(admin_configuration(settings)).list_topics(topic, timeout=10)
    leader: int = metadata.topics[topic].partitions[0].leader
    return leader


def _isr_sizes(settings: Settings, topic: str) -> set[int]:
    metadata = AdminClient(admin_configuration(settings)).list_topics(topic, timeout=10)
    return {len(partition.isrs) for partition in metadata.topics[topic].partitions.values()}


def test_writes_survive_a_killed_broker_which_comes_back_in_sync(cluster: Settings) -> None:
    kafka = KafkaCluster(cluster)
    topic = unique_name("cluster")
    make_topics(cluster, topic, partitions=4)
    _produce(cluster, topic, 0, MESSAGES // 2)

    victim = _leader_of_partition_0(cluster, topic)
    pid = kafka.kill_broker(victim)
    assert not pid_alive(pid)
    assert kafka.broker(victim).state == "down"
    # acks=all with min.insync.replicas=2: the two survivors acknowledge everything.
    _produce(cluster, topic, MESSAGES // 2, MESSAGES // 2)
    assert wait_until(lambda: _isr_sizes(cluster, topic) == {2}, FAILOVER_DEADLINE, 0.5)
    assert _leader_of_partition_0(cluster, topic) != victim
    assert _read_all(cluster, topic, 4, MESSAGES) == set(range(MESSAGES))

    restarted = kafka.start_broker(victim)
    assert restarted.state == "running"
    assert restarted.pid not in (None, pid)
    kafka.wait_fully_replicated(FAILOVER_DEADLINE, [topic])
    assert _isr_sizes(cluster, topic) == {3}


def test_a_paused_broker_resumes(cluster: Settings) -> None:
    kafka = KafkaCluster(cluster)
    pid = kafka.pause_broker(3)
    try:
        assert kafka.broker(3).state == "paused"
    finally:
        assert kafka.resume_broker(3) == pid
    assert kafka.broker(3).state == "running"


def test_down_stops_every_broker(cluster: Settings) -> None:
    pids = [broker.pid for broker in KafkaCluster(cluster).brokers()]
    assert None not in pids
    result = CliRunner().invoke(stack, ["down"], obj=cluster)
    assert result.exit_code == 0, result.output
    for name in ("kafka-1", "kafka-2", "kafka-3"):
        assert f"{name:<9} stopped in" in result.output
    assert not any(pid_alive(pid) for pid in pids if pid is not None)
    assert [broker.state for broker in KafkaCluster(cluster).brokers()] == ["down"] * 3
    status = CliRunner().invoke(stack, ["status"], obj=cluster)
    assert status.exit_code == 1
    assert status.output.count(" down ") == 3


def test_the_cluster_keeps_its_files_apart_from_the_single_broker(cluster: Settings) -> None:
    cluster_dir = Path(cluster.state_dir) / "kafka" / "cluster-3"
    assert (Path(cluster.state_dir) / "kafka" / "brokers").read_text() == "3\n"
    for node_id in (1, 2, 3):
        assert (cluster_dir / f"node-{node_id}" / "data" / "meta.properties").exists()
    assert not (Path(cluster.state_dir) / "kafka" / "data").exists()

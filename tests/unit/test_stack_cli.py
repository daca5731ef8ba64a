"""`workers stack up --brokers` and `workers topics create --replication-factor`: arguments,
the recorded layout, and refusals, without starting any server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from workers.cli import make_cli
from workers.common.local_kafka import record_brokers, recorded_brokers
from workers.common.net import free_port
from workers.common.settings import Settings
from workers.stack import cli as stack_cli
from workers.stack import kafka_note, kafka_services, stack_up
from workers.stack.cli import stack
from workers.stack.errors import StackError
from workers.stack.kafka import CLUSTER_READY_TIMEOUT, READY_TIMEOUT, KafkaService

LOADER = "tests.support.echo_worker:build_registry"


@pytest.fixture
def stack_calls(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    calls: list[int | None] = []

    def fake_stack_up(settings: Settings, echo: Any, brokers: int | None = None) -> list[Any]:
        calls.append(brokers)
        return []

    monkeypatch.setattr(stack_cli, "stack_up", fake_stack_up)
    return calls


def _isolated(tmp_path: Path) -> Settings:
    """A stack in `tmp_path` on free ports, PostgreSQL and Redis external and unreachable."""
    return Settings(
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        database_url=f"postgresql://workers@127.0.0.1:{free_port()}/workers",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        state_dir=tmp_path,
        external_services=frozenset({"postgres", "redis"}),
    )


@pytest.mark.parametrize(
    ("arguments", "brokers"), [([], None), (["--brokers", "3"], 3), (["--brokers", "1"], 1)]
)
def test_up_passes_the_broker_count(
    stack_calls: list[int | None], arguments: list[str], brokers: int | None
) -> None:
    result = CliRunner().invoke(stack, ["up", *arguments])
    assert result.exit_code == 0, result.output
    assert stack_calls == [brokers]


@pytest.mark.parametrize("count", ["2", "0", "three"])
def test_up_refuses_other_broker_counts(stack_calls: list[int | None], count: str) -> None:
    result = CliRunner().invoke(stack, ["up", "--brokers", count])
    assert result.exit_code == 2
    assert "'1', '3'" in result.output
    assert stack_calls == []


def test_status_shows_one_line_per_broker(tmp_path: Path) -> None:
    settings = _isolated(tmp_path)
    record_brokers(tmp_path, 3)
    result = CliRunner().invoke(stack, ["status"], obj=settings)
    assert result.exit_code == 1, result.output  # Nothing runs.
    lines = result.output.splitlines()
    base = int(settings.kafka_bootstrap_servers.rpartition(":")[2])
    for node_id in (1, 2, 3):
        [line] = [line for line in lines if line.startswith(f"kafka-{node_id} ")]
        assert line.split()[1:3] == ["down", f"127.0.0.1:{base + 2 * (node_id - 1)}"]
    assert lines[-1].split()[:3] == ["kafka", "3", "brokers:"]
    assert lines[-1].endswith(f"127.0.0.1:{base},127.0.0.1:{base + 2},127.0.0.1:{base + 4}")


def test_switching_layouts_while_kafka_runs_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _isolated(tmp_path)
    # The single broker runs (as far as its pid file says); nothing may be started.
    monkeypatch.setattr(
        KafkaService, "own_pid", lambda self: 4242 if self.name == "kafka" else None
    )
    monkeypatch.setattr(KafkaService, "prepare", lambda self, echo: pytest.fail("started"))
    with pytest.raises(StackError, match=r"kafka pid 4242\); stop it with `workers stack down`"):
        stack_up(settings, lambda line: None, brokers=3)
    assert recorded_brokers(tmp_path) == 1


def test_cluster_nodes_get_longer_to_start(tmp_path: Path) -> None:
    settings = _isolated(tmp_path)
    [single] = kafka_services(settings, 1)
    assert (single.name, single.ready_timeout) == ("kafka", READY_TIMEOUT)
    cluster = kafka_services(settings, 3)
    assert [(node.name, node.ready_timeout) for node in cluster] == [
        ("kafka-1", CLUSTER_READY_TIMEOUT),
        ("kafka-2", CLUSTER_READY_TIMEOUT),
        ("kafka-3", CLUSTER_READY_TIMEOUT),
    ]
    assert CLUSTER_READY_TIMEOUT > READY_TIMEOUT


def test_brokers_cannot_be_chosen_for_an_external_kafka(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, external_services=frozenset({"kafka"}))
    with pytest.raises(StackError, match="KAFKA_BOOTSTRAP_SERVERS points at another one"):
        stack_up(settings, lambda line: None, brokers=3)
    record_brokers(tmp_path, 3)
    [external] = kafka_services(settings)
    assert (external.name, external.url) == ("kafka", settings.kafka_bootstrap_servers)
    assert kafka_note(settings) is None


@pytest.fixture
def topic_calls(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    calls: list[int | None] = []

    def fake_create_topics(
        settings: Settings, specs: list[Any], replication_factor: int | None = None
    ) -> list[Any]:
        calls.append(replication_factor)
        return []

    monkeypatch.setattr("workers.cli.create_topics", fake_create_topics)
    return calls


@pytest.mark.parametrize(("arguments", "factor"), [([], None), (["--replication-factor", "2"], 2)])
def test_topics_create_takes_the_replication_from_the_cluster_unless_given(
    topic_calls: list[int | None], arguments: list[str], factor: int | None
) -> None:
    result = CliRunner().invoke(make_cli(LOADER), ["topics", "create", *arguments])
    assert result.exit_code == 0, result.output
    assert topic_calls == [factor]


def test_topics_create_refuses_a_replication_factor_of_zero(topic_calls: list[int | None]) -> None:
    result = CliRunner().invoke(make_cli(LOADER), ["topics", "create", "--replication-factor", "0"])
    assert result.exit_code == 2
    assert topic_calls == []

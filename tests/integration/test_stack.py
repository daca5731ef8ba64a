"""`workers stack`: the local Kafka, PostgreSQL and Redis come up, answer and report status.

The stack is shared with the other integration tests, so it is never stopped here.
"""

from __future__ import annotations

import psycopg
import pytest
import redis
from click.testing import CliRunner
from confluent_kafka.admin import AdminClient

from workers.common.net import free_port
from workers.common.settings import Settings, redact_url
from workers.stack import ServiceStatus, stack_up
from workers.stack.cli import stack

pytestmark = pytest.mark.integration

SERVICES = ("kafka", "postgres", "redis")


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="module")
def first_up(settings: Settings) -> list[ServiceStatus]:
    # The stack may already be up (another test, a developer's shell): then this is the
    # idempotent case and must report the services as running just the same.
    return stack_up(settings, echo=lambda line: None)


def _expected_state(settings: Settings, name: str) -> str:
    return "external" if name in settings.external_services else "running"


def test_up_reports_every_service_running(
    settings: Settings, first_up: list[ServiceStatus]
) -> None:
    assert [status.name for status in first_up] == list(SERVICES)
    for status in first_up:
        assert status.state == _expected_state(settings, status.name), status


def test_kafka_answers_metadata_requests(settings: Settings, first_up: list[ServiceStatus]) -> None:
    admin = AdminClient(dict(settings.kafka_client_config()))
    metadata = admin.list_topics(timeout=10)
    assert metadata.brokers


def test_postgres_answers_queries(settings: Settings, first_up: list[ServiceStatus]) -> None:
    with psycopg.connect(settings.database_url, connect_timeout=5) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_redis_answers_ping(settings: Settings, first_up: list[ServiceStatus]) -> None:
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    try:
        assert client.ping()
    finally:
        client.close()


def test_second_up_is_a_no_op(settings: Settings, first_up: list[ServiceStatus]) -> None:
    lines: list[str] = []
    again = stack_up(settings, echo=lines.append)
    assert [status.state for status in again] == [status.state for status in first_up]
    for before, after in zip(first_up, again, strict=True):
        if after.state == "running":
            # The same process as before: nothing was restarted.
            assert "already running" in after.detail, after
            assert _pid(after) == _pid(before), (before, after)
    assert len(lines) == len(SERVICES)


def _pid(status: ServiceStatus) -> str:
    """`pid 123` from a detail such as `pid 123, started in 7.4 s`."""
    return status.detail.split(",")[0]


def test_status_command_exits_0_and_shows_the_urls(
    settings: Settings, first_up: list[ServiceStatus]
) -> None:
    result = CliRunner().invoke(stack, ["status"])
    assert result.exit_code == 0, result.output
    for url in (
        settings.kafka_bootstrap_servers,
        redact_url(settings.database_url),
        redact_url(settings.redis_url),
    ):
        assert url in result.output


def test_status_reports_unreachable_external_redis_as_down(
    first_up: list[ServiceStatus],
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    result = CliRunner().invoke(stack, ["status"], env={"REDIS_URL": url})
    assert result.exit_code == 1, result.output
    redis_lines = [line for line in result.output.splitlines() if line.startswith("redis")]
    assert len(redis_lines) == 1, result.output
    assert redis_lines[0].split()[1] == "down"
    assert url in redis_lines[0]

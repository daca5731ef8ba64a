"""`workers ids generate` against the real Redis, through click's CliRunner."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from redis import Redis

from workers.cli import make_cli
from workers.common.net import free_port
from workers.common.settings import Settings
from workers.common.snowflake import decode_leased_id, decode_sentry_id
from workers.fleet import FLEET_REGISTRY_LOADER

pytestmark = pytest.mark.integration


@pytest.fixture
def key() -> Iterator[str]:
    name = f"test-cli-{uuid.uuid4().hex[:12]}"
    yield name
    client: Redis = Redis.from_url(Settings.from_env().redis_url)
    leftovers = list(client.scan_iter(match=f"workers:snowflake:*{{{name}*"))
    if leftovers:
        client.delete(*leftovers)
    client.close()


def test_generate_sentry_ids_uses_the_configured_region(key: str) -> None:
    result = CliRunner().invoke(
        make_cli(FLEET_REGISTRY_LOADER),
        ["ids", "generate", "--layout", "sentry", "--count", "20", "--key", key],
        env={"WORKERS_SNOWFLAKE_REGION": "7", "WORKERS_LOG_FORMAT": "json"},
    )
    assert result.exit_code == 0, result.output
    ids = [int(line) for line in result.stdout.splitlines()]
    assert len(set(ids)) == 20
    assert {decode_sentry_id(i).region for i in ids} == {7}


def test_generate_blob_ids_and_decode_one(key: str) -> None:
    runner = CliRunner()
    cli = make_cli(FLEET_REGISTRY_LOADER)
    result = runner.invoke(
        cli,
        ["ids", "generate", "--layout", "blob", "--count", "25000", "--key", key],
        env={"WORKERS_LOG_FORMAT": "json"},
    )
    assert result.exit_code == 0, result.output
    ids = [int(line) for line in result.stdout.splitlines()]
    assert len(ids) == len(set(ids)) == 25_000
    assert ids == sorted(ids)
    worker_id = decode_leased_id(ids[0]).worker_id
    decoded = runner.invoke(cli, ["ids", "decode", str(ids[0])])
    assert decoded.exit_code == 0, decoded.output
    assert decoded.output.splitlines()[0] == "layout: blob"
    assert decoded.output.splitlines()[2] == f"worker_id: {worker_id}"


@pytest.mark.parametrize("layout", ["sentry", "blob"])
def test_generate_with_redis_down_is_one_clear_error(layout: str) -> None:
    result = CliRunner().invoke(
        make_cli(FLEET_REGISTRY_LOADER),
        ["ids", "generate", "--layout", layout],
        env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "WORKERS_LOG_FORMAT": "json"},
    )
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "Error: " in result.output
    assert "Redis" in result.output
    assert "ConnectionError" in result.output
    assert "Traceback" not in result.output


def test_generate_rejects_a_bad_key() -> None:
    result = CliRunner().invoke(
        make_cli(FLEET_REGISTRY_LOADER), ["ids", "generate", "--key", "no spaces"]
    )
    assert result.exit_code == 1
    assert "Error: snowflake key 'no spaces' must be 1 to 100 characters" in result.output

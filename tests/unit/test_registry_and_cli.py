from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from arroyo.dlq import DlqLimit
from arroyo.types import Partition, Topic
from click.testing import CliRunner

from tests.support.echo_worker import ECHO_DLQ_TOPIC, ECHO_INPUT_TOPIC, build_definition
from workers.cli import make_cli
from workers.common import run_cli
from workers.common.dlq_limit import DlqLimitExceeded, InvalidSeen
from workers.common.registry import ConsumerRegistry, UnknownConsumerError
from workers.common.runner import RunOptions
from workers.common.settings import Settings
from workers.common.topics import fleet_topics
from workers.fleet import FLEET_REGISTRY_LOADER, build_registry

LOADER = "tests.support.echo_worker:build_registry"


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[RunOptions]:
    calls: list[RunOptions] = []

    def fake_run_worker_process(
        definition: Any, options: RunOptions, *args: Any, **kw: Any
    ) -> None:
        calls.append(options)

    monkeypatch.setattr(run_cli, "run_worker_process", fake_run_worker_process)
    return calls


def test_registry_rejects_duplicates_and_names_known_consumers() -> None:
    registry = ConsumerRegistry([build_definition()])
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(build_definition())
    with pytest.raises(UnknownConsumerError) as error:
        registry.get("nope")
    assert str(error.value) == "no consumer named 'nope'; known: test-echo"


def test_fleet_registry_has_the_billing_worker() -> None:
    registry = build_registry()
    billing = registry.get("billing")
    assert billing.topic == "snuba-generic-metrics"
    assert billing.dlq_topic is not None


def test_run_list_shows_the_registry() -> None:
    result = CliRunner().invoke(make_cli(LOADER), ["run", "--list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:4] == ["NAME", "TOPIC", "DLQ", "TOPIC"]
    assert lines[1].split()[:4] == ["test-echo", ECHO_INPUT_TOPIC, ECHO_DLQ_TOPIC, "test-echo"]


def test_run_passes_every_option_through(captured: list[RunOptions], tmp_path: Path) -> None:
    health = tmp_path / "health"
    result = CliRunner().invoke(
        make_cli(LOADER),
        [
            "run",
            "test-echo",
            "--consumer-group",
            "g1",
            "--auto-offset-reset",
            "latest",
            "--max-batch-size",
            "7",
            "--max-batch-time-ms",
            "250",
            "--healthcheck-file",
            str(health),
            "--disable-dlq",
            "--join-timeout",
            "3.5",
            "--max-poll-interval-ms",
            "45000",
            "--commit-interval-ms",
            "200",
            "--group-instance-id",
            "pod-0",
            "--metrics-port",
            "0",
            "--dlq-max-invalid-ratio",
            "0.05",
            "--dlq-max-consecutive-invalid",
            "off",
            "--output-topic",
            "elsewhere",
            "--log-level",
            "debug",
        ],
    )
    assert result.exit_code == 0, result.output
    (options,) = captured
    assert options == RunOptions(
        input_topic=ECHO_INPUT_TOPIC,
        consumer_group="g1",
        max_batch_size=7,
        max_batch_time_ms=250,
        auto_offset_reset="latest",
        processes=1,
        healthcheck_file=health,
        enable_dlq=False,
        join_timeout_seconds=3.5,
        max_poll_interval_ms=45000,
        commit_interval_ms=200,
        group_instance_id="pod-0",
        metrics_port=0,
        dlq_limit=DlqLimit(max_invalid_ratio=0.05, max_consecutive_count=None),
        worker_options={"output_topic": "elsewhere"},
    )


def test_run_defaults_come_from_the_definition(captured: list[RunOptions]) -> None:
    result = CliRunner().invoke(make_cli(LOADER), ["run", "test-echo"])
    assert result.exit_code == 0, result.output
    (options,) = captured
    definition = build_definition()
    assert options.consumer_group == definition.consumer_group
    assert options.max_batch_size == definition.max_batch_size
    assert options.max_batch_time_ms == definition.max_batch_time_ms
    assert options.enable_dlq is True
    assert options.dlq_limit == DlqLimit(max_invalid_ratio=0.01, max_consecutive_count=1000)
    assert options.worker_options == {"output_topic": "test-echo-output"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run"], "missing consumer NAME"),
        (["run", "nope"], "no consumer named 'nope'; known: test-echo"),
        (["run", "test-echo", "--bogus", "1"], "test-echo: No such option '--bogus'"),
        (["run", "test-echo", "--max-batch-size", "0"], "0 is not in the range x>=1"),
        (
            ["run", "test-echo", "--max-poll-interval-ms", "20000", "--join-timeout", "25"],
            "must exceed --join-timeout",
        ),
        (
            ["run", "test-echo", "--processes", "2", "--group-instance-id", "x"],
            "--group-instance-id needs --processes 1",
        ),
        (["run", "test-echo", "--dlq-max-invalid-ratio", "-1"], "-1.0 is not in the range"),
        (["run", "test-echo", "--dlq-max-consecutive-invalid", "many"], "'many' is not a valid"),
        (["run", "nope", "--help"], "no consumer named 'nope'; known: test-echo"),
    ],
)
def test_run_usage_errors_are_specific(
    captured: list[RunOptions], args: list[str], message: str
) -> None:
    result = CliRunner().invoke(make_cli(LOADER), args)
    assert result.exit_code == 2
    assert message in result.output
    assert captured == []


def test_run_name_help_lists_the_shared_options_then_the_workers_own() -> None:
    result = CliRunner().invoke(make_cli(LOADER), ["run", "test-echo", "--help"])
    assert result.exit_code == 0, result.output
    shared, _, own = result.output.partition("\nOptions of test-echo:\n")
    assert "--dlq-max-invalid-ratio RATIO|off" in shared
    assert "--dlq-max-consecutive-invalid N|off" in shared
    assert "--output-topic" not in shared
    assert own.splitlines()[0].strip() == build_definition().description
    assert "--output-topic TEXT" in own
    assert "Copies go here.  [default: test-echo-output]" in own
    # Before NAME, with other options, or NAME's own: the same help.
    for args in (
        ["--help", "test-echo"],
        ["--topic", "t", "test-echo", "--output-topic", "x", "--help"],
    ):
        again = CliRunner().invoke(make_cli(LOADER), ["run", *args])
        assert again.output == result.output


def test_run_help_without_a_name_lists_only_the_shared_options() -> None:
    result = CliRunner().invoke(make_cli(LOADER), ["run", "--help"])
    assert result.exit_code == 0, result.output
    assert "--dlq-max-invalid-ratio" in result.output
    assert "Options of" not in result.output
    assert "--output-topic" not in result.output


def test_the_fleets_workers_show_their_own_options() -> None:
    result = CliRunner().invoke(make_cli(FLEET_REGISTRY_LOADER), ["run", "billing", "--help"])
    assert result.exit_code == 0, result.output
    own = result.output.split("\nOptions of billing:\n")[1]
    for option in ("--outcomes-topic", "--processing-guarantee", "--transactional-id"):
        assert option in own


def test_a_dlq_limit_stop_is_a_clear_error_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    partition = Partition(Topic("test-echo-input"), 2)
    exceeded = DlqLimitExceeded(
        "test-echo",
        "max_consecutive_invalid",
        "--dlq-max-consecutive-invalid 3: 4 invalid messages in a row",
        partition,
        41,
        [InvalidSeen(partition, 41, "poison_pill: value starts with poison")],
    )

    def stopped(*args: Any, **kwargs: Any) -> None:
        raise exceeded

    monkeypatch.setattr(run_cli, "run_worker_process", stopped)
    result = CliRunner().invoke(make_cli(LOADER), ["run", "test-echo"])
    assert result.exit_code == 1
    assert result.output == f"Error: {exceeded}\n"
    assert "test-echo-input[2] offset 41: --dlq-max-consecutive-invalid 3" in result.output


def test_topics_cover_inputs_outputs_and_dlqs_with_large_messages() -> None:
    specs = {spec.name: spec for spec in fleet_topics(ConsumerRegistry([build_definition()]), 3)}
    assert set(specs) == {"test-echo-input", "test-echo-output", "test-echo-dlq"}
    assert all(spec.partitions == 3 for spec in specs.values())
    assert all(int(spec.config["max.message.bytes"]) >= 8 * 1024 * 1024 for spec in specs.values())
    assert "retention.ms" in specs["test-echo-dlq"].config


def test_config_command_masks_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:secretpw@db:5432/x")
    monkeypatch.setenv("KAFKA_CONFIG_sasl.password", "hunter2")
    result = CliRunner().invoke(make_cli(LOADER), ["config"])
    assert result.exit_code == 0, result.output
    assert "secretpw" not in result.output
    assert "hunter2" not in result.output
    assert "database_url = postgresql://u:***@db:5432/x" in result.output
    assert Settings.from_env().external_services == {"postgres"}

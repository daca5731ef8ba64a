"""The consumer runtime against the real local Kafka: commits, restarts, DLQ, metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from harness.kafka import make_topics, unique_name
from harness.waiting import wait_for
from harness.worker_process import WorkerProcess
from tests.support.echo_worker import ECHO_DLQ_TOPIC
from tests.support.kafka import Record, produce, read_all, read_available, wait_until_committed
from workers.common.kafka_offsets import committed_offsets, fully_committed, high_watermarks
from workers.common.settings import Settings

pytestmark = pytest.mark.integration

LOADER = "tests.support.echo_worker:build_registry"
ROOT = Path(__file__).resolve().parents[2]


class EchoProcess(WorkerProcess):
    """The test-only echo consumer, run through the production CLI."""

    def __init__(self, input_topic: str, output_topic: str, group: str, *extra: str) -> None:
        super().__init__(
            "test-echo",
            "--topic", input_topic, "--consumer-group", group, "--output-topic", output_topic,
            *extra,
            loader=LOADER,
            log_name=group,
        )  # fmt: skip


def _echoed(records: list[Record]) -> list[tuple[int, int]]:
    return [(int(r.headers["echo_partition"]), int(r.headers["echo_offset"])) for r in records]


def _input_positions(settings: Settings, topic: str) -> set[tuple[int, int]]:
    return {
        (partition, offset)
        for partition, high in high_watermarks(settings, topic).items()
        for offset in range(high)
    }


@pytest.fixture
def topics(settings: Settings) -> tuple[str, str, str]:
    names = (unique_name("echo-in"), unique_name("echo-out"), unique_name("echo-group"))
    make_topics(settings, names[0], names[1], ECHO_DLQ_TOPIC, partitions=2)
    return names


def test_graceful_restart_resumes_from_committed_offset_without_gaps_or_repeats(
    settings: Settings, topics: tuple[str, str, str]
) -> None:
    input_topic, output_topic, group = topics
    produce(settings, input_topic, ((f"k{i}".encode(), f"v{i}".encode()) for i in range(300)))

    first = EchoProcess(input_topic, output_topic, group)
    assert len(read_all(settings, output_topic, 300)) == 300
    assert first.stop() == 0
    assert fully_committed(settings, group, input_topic)

    produce(settings, input_topic, ((f"k{i}".encode(), f"w{i}".encode()) for i in range(150)))
    second = EchoProcess(input_topic, output_topic, group)
    records = read_all(settings, output_topic, 450)
    assert second.stop() == 0

    echoed = _echoed(records)
    assert Counter(echoed).most_common(1)[0][1] == 1, "a message was processed twice"
    assert set(echoed) == _input_positions(settings, input_topic)
    assert fully_committed(settings, group, input_topic)


def test_kill_9_reprocesses_only_the_uncommitted_tail(
    settings: Settings, topics: tuple[str, str, str]
) -> None:
    input_topic, output_topic, group = topics
    total = 30_000
    produce(settings, input_topic, ((None, f"v{i}".encode()) for i in range(total)))

    # Static membership: the restarted member takes over the dead one's partitions at once
    # instead of waiting for its session to time out.
    victim = EchoProcess(input_topic, output_topic, group, "--group-instance-id", "echo-0")
    read_all(settings, output_topic, 500)
    victim.stop(signal.SIGKILL)
    committed_at_kill = committed_offsets(settings, group, input_topic)
    assert sum(committed_at_kill.values()) < total, "killed too late: nothing left in flight"
    before_restart = _echoed(read_available(settings, output_topic))

    survivor = EchoProcess(input_topic, output_topic, group, "--group-instance-id", "echo-0")
    wait_until_committed(settings, group, input_topic, timeout=60)
    assert survivor.stop() == 0

    echoed = _echoed(read_available(settings, output_topic))
    assert set(echoed) == _input_positions(settings, input_topic), "a message was skipped"
    repeated = [position for position, count in Counter(echoed).items() if count > 1]
    for partition, offset in repeated:
        assert offset >= committed_at_kill.get(partition, 0), "a committed message was redone"
    # Only what the killed process had produced but not yet committed can repeat.
    assert len(repeated) <= len(before_restart)


def test_poison_message_goes_to_the_dlq_and_later_messages_are_processed(
    settings: Settings, topics: tuple[str, str, str], tmp_path: Path
) -> None:
    input_topic, output_topic, group = topics
    values = [b"ok-1", b"poison-a", b"ok-2", b"ok-3", b"poison-b", b"ok-4"]
    produce(settings, input_topic, ((b"same-key", value) for value in values))
    health = tmp_path / "health"

    echo = EchoProcess(input_topic, output_topic, group, "--healthcheck-file", str(health))
    try:
        # The liveness probe removes the file; a live loop touches it again within seconds.
        wait_for(health.exists, 30, "the healthcheck file")
        probe = [sys.executable, "-m", "arroyo.healthcheck", str(health)]
        assert subprocess.run(probe, check=False).returncode == 0
        assert not health.exists()
        wait_for(health.exists, 10, "the healthcheck file to be touched again")
        copied = read_all(settings, output_topic, 4)
        assert sorted(r.value for r in copied) == [b"ok-1", b"ok-2", b"ok-3", b"ok-4"]

        def dead_letters() -> list[Record] | None:
            found = [
                r
                for r in read_available(settings, ECHO_DLQ_TOPIC)
                if r.headers.get("original_topic") == input_topic.encode()
            ]
            return found if len(found) >= 2 else None

        dead = wait_for(dead_letters, 30, "two DLQ messages")
        assert sorted(r.value for r in dead) == [b"poison-a", b"poison-b"]
        for record in dead:
            assert record.headers["reason"] == b"poison_pill: value starts with poison"
            assert record.headers["worker"] == b"test-echo"
            assert int(record.headers["original_offset"]) in (1, 4)
        assert echo.process.poll() is None, "the worker stopped after a poison message"

        def scraped_with_dlq_counts() -> str | None:
            text = echo.scrape_or_none()
            dlq_line = 'workers_dlq_messages_total{reason="poison_pill",worker="test-echo"} 2.0'
            return text if text and dlq_line in text else None

        metrics = wait_for(scraped_with_dlq_counts, 30, "DLQ metrics")
        assert "arroyo_consumer_run_total" in metrics
        assert 'workers_step_messages_in_total{step="validate",worker="test-echo"} 6.0' in metrics
        assert 'workers_step_messages_out_total{step="validate",worker="test-echo"} 4.0' in metrics
        assert "workers_consumer_lag_messages" in metrics
    finally:
        assert echo.stop() == 0


def test_processes_share_partitions_and_metrics_are_aggregated(
    settings: Settings, tmp_path: Path
) -> None:
    input_topic, output_topic, group = (
        unique_name("echo-in"), unique_name("echo-out"), unique_name("echo-group")
    )  # fmt: skip
    make_topics(settings, input_topic, output_topic, partitions=4)
    produce(settings, input_topic, ((f"k{i}".encode(), b"v") for i in range(400)))

    health = tmp_path / "health"
    echo = EchoProcess(
        input_topic, output_topic, group, "--processes", "2", "--healthcheck-file", str(health)
    )
    try:
        assert len(read_all(settings, output_topic, 400)) == 400
        # The parent's file is touched only while both children's files are fresh.
        wait_for(health.exists, 30, "the parent's healthcheck file")
        assert (tmp_path / "health.0").exists()
        assert (tmp_path / "health.1").exists()
        wait_for(
            lambda: (
                (text := echo.scrape_or_none())
                and 'workers_step_messages_in_total{step="validate",worker="test-echo"} 400.0'
                in text
            ),
            30,
            "aggregated step metrics from both processes",
        )
    finally:
        assert echo.stop() == 0
    assert fully_committed(settings, group, input_topic)


def test_a_dead_child_stops_the_others_and_the_parent_fails(settings: Settings) -> None:
    input_topic, output_topic, group = (
        unique_name("echo-in"), unique_name("echo-out"), unique_name("echo-group")
    )  # fmt: skip
    make_topics(settings, input_topic, output_topic, partitions=2)
    echo = EchoProcess(input_topic, output_topic, group, "--processes", "2")
    children_file = Path(f"/proc/{echo.process.pid}/task/{echo.process.pid}/children")

    def child_pids() -> list[int] | None:
        pids = [int(pid) for pid in children_file.read_text().split()]
        # The spawn start method also runs a resource tracker child; consumers import workers.
        consumers = [
            pid
            for pid in pids
            if b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        return consumers if len(consumers) == 2 else None

    victim, survivor = wait_for(child_pids, 30, "two consumer processes")
    wait_for(echo.scrape_or_none, 30, "the parent's metrics endpoint")
    os.kill(victim, signal.SIGKILL)
    assert echo.process.wait(60) == 1
    assert not Path(f"/proc/{survivor}").exists()

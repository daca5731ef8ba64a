"""`workers groups describe | reset-offsets` against the real Kafka, on a worker (the echo
worker, run as `workers run` runs it) with a topic and a group of the test's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.kafka import make_topics, unique_name
from harness.waiting import wait_for
from harness.worker_process import WorkerProcess
from tests.support.dlq_registry import LOADER, CliResult, run_cli
from tests.support.kafka import produce, read_available, wait_until_committed
from workers.common.kafka_offsets import committed_offsets
from workers.common.settings import Settings

pytestmark = pytest.mark.integration

MESSAGES = 10


class Echo:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.input = unique_name("groups-in")
        self.output = unique_name("groups-out")
        self.group = unique_name("groups-group")
        make_topics(settings, self.input, self.output, partitions=2)
        produce(settings, self.input, [(b"k%d" % n, b"v%d" % n) for n in range(MESSAGES)])
        self.worker: WorkerProcess | None = None

    def start(self) -> None:
        self.worker = WorkerProcess(
            "test-echo",
            "--topic", self.input, "--consumer-group", self.group, "--output-topic", self.output,
            loader=LOADER, log_name=self.group,
        )  # fmt: skip

    def stop(self) -> None:
        if self.worker is not None:
            assert self.worker.stop() == 0
            self.worker = None

    def groups(self, *args: str) -> CliResult:
        return run_cli("groups", *args, "test-echo", "--group", self.group, "--topic", self.input)

    def committed(self) -> dict[int, int]:
        return committed_offsets(self.settings, self.group, self.input)


@pytest.fixture
def echo(settings: Settings) -> Iterator[Echo]:
    echo = Echo(settings)
    yield echo
    echo.stop()


def test_describe_shows_the_member_its_partitions_and_no_lag_once_committed(echo: Echo) -> None:
    echo.start()
    wait_until_committed(echo.settings, echo.group, echo.input)

    def described() -> CliResult | None:
        result = echo.groups("describe")
        return result if "members: 1" in result.stdout and "[0,1]" in result.stdout else None

    result = wait_for(described, 60, "the member and its two partitions described")
    assert result.exit_code == 0, result.stderr
    assert f"group {echo.group}: state STABLE, type CONSUMER" in result.lines[0]
    member = result.lines[3].split()
    assert member[0] == "test-echo-0"  # `workers run`'s client id: worker and process index
    assert member[-1] == f"{echo.input}[0,1]"
    rows = [line.split() for line in result.lines if line.startswith(echo.input)]
    assert [row[:2] for row in rows] == [[echo.input, "0"], [echo.input, "1"]]
    assert all(row[2] == row[3] and row[4] == "0" for row in rows)  # committed = high, lag 0
    assert all(row[5] == f"{member[0]}@{member[1]}" for row in rows)
    assert sum(int(row[3]) for row in rows) == MESSAGES
    assert result.lines[-1] == "total lag: 0"


def test_a_reset_is_refused_while_the_group_has_a_member_and_applied_once_it_has_none(
    echo: Echo,
) -> None:
    echo.start()
    ends = wait_until_committed(echo.settings, echo.group, echo.input)
    wait_for(lambda: "members: 1" in echo.groups("describe").stdout, 60, "the member joined")

    refused = echo.groups("reset-offsets", "--to-earliest")
    assert refused.exit_code == 1
    assert f"group {echo.group} has 1 active member(s)" in refused.stderr
    assert "stop them before resetting its offsets" in refused.stderr
    assert echo.committed() == ends

    echo.stop()
    wait_for(lambda: "members: 0" in echo.groups("describe").stdout, 60, "the member gone")

    dry = echo.groups("reset-offsets", "--to-earliest", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert dry.lines[0] == f"group {echo.group}, {echo.input}: to earliest"
    assert [line.split()[4:6] for line in dry.lines[2:4]] == [
        [str(ends[0]), "0"],
        [str(ends[1]), "0"],
    ]
    assert dry.lines[-1] == "dry run: nothing changed"
    assert echo.committed() == ends

    shifted = echo.groups("reset-offsets", "--shift", "-2")
    assert shifted.exit_code == 0, shifted.stderr
    assert echo.committed() == {p: max(offset - 2, 0) for p, offset in ends.items()}
    assert shifted.lines[-1] == "committed the new offsets of 2 partitions"

    future = echo.groups("reset-offsets", "--to-datetime", "2999-01-01T00:00:00Z")
    assert future.exit_code == 0, future.stderr
    assert future.lines[0].endswith(
        "to datetime 2999-01-01T00:00:00+00:00: the first message at or after it"
    )
    assert echo.committed() == ends

    earliest = echo.groups("reset-offsets", "--to-earliest")
    assert earliest.exit_code == 0, earliest.stderr
    assert echo.committed() == {0: 0, 1: 0}

    # The worker processes everything again from the start.
    echo.start()
    wait_until_committed(echo.settings, echo.group, echo.input)
    copies = read_available(echo.settings, echo.output)
    assert len(copies) == 2 * MESSAGES
    assert sorted(record.value for record in copies) == sorted(
        [b"v%d" % n for n in range(MESSAGES)] * 2
    )


def test_describe_of_a_group_that_never_existed_shows_the_topics_lag(echo: Echo) -> None:
    result = echo.groups("describe")
    assert result.exit_code == 0, result.stderr
    assert (
        result.lines[0] == f"group {echo.group}: no such group (no members, no committed offsets)"
    )
    assert result.lines[-1] == f"total lag: {MESSAGES}"

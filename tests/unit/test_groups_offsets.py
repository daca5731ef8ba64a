"""Where `workers groups reset-offsets` moves a partition, and the lag `describe` shows."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from workers.cli import make_cli
from workers.fleet import FLEET_REGISTRY_LOADER
from workers.groups.inspect import GroupDescription, Member
from workers.groups.offsets import PartitionOffsets, Reset, reset_target
from workers.groups.render import describe_lines, reset_lines

COMMITTED = PartitionOffsets("in", 0, low=10, high=100, committed=40)
NEVER_COMMITTED = PartitionOffsets("in", 1, low=10, high=100, committed=None)
BEHIND_RETENTION = PartitionOffsets("in", 2, low=10, high=100, committed=3)


def test_lag_counts_from_the_commit_or_else_from_the_low_watermark() -> None:
    assert COMMITTED.lag == 60
    assert NEVER_COMMITTED.lag == 90
    assert BEHIND_RETENTION.lag == 90
    assert PartitionOffsets("in", 0, 0, 0, None).lag == 0


@pytest.mark.parametrize(
    ("reset", "at_time", "expected"),
    [
        (Reset("earliest"), None, (10, 10, 10)),
        (Reset("latest"), None, (100, 100, 100)),
        (Reset("shift", -15), None, (25, 10, 10)),
        (Reset("shift", 5), None, (45, 15, 10)),
        (Reset("shift", 500), None, (100, 100, 100)),
        (Reset("datetime"), 70, (70, 70, 70)),
        (Reset("datetime"), -1, (100, 100, 100)),
        (Reset("datetime"), None, (100, 100, 100)),
        (Reset("datetime"), 2, (10, 10, 10)),
    ],
)
def test_a_reset_target_stays_within_the_watermarks(
    reset: Reset, at_time: int | None, expected: tuple[int, int, int]
) -> None:
    partitions = (COMMITTED, NEVER_COMMITTED, BEHIND_RETENTION)
    assert tuple(reset_target(p, reset, at_time) for p in partitions) == expected


def test_a_reset_prints_before_and_after_per_partition() -> None:
    lines = reset_lines([COMMITTED, NEVER_COMMITTED], {("in", 0): 10, ("in", 1): 100})
    assert [line.split() for line in lines] == [
        ["TOPIC", "PARTITION", "LOW", "HIGH", "BEFORE", "AFTER", "LAG", "AFTER"],
        ["in", "0", "10", "100", "40", "10", "90"],
        ["in", "1", "10", "100", "-", "100", "0"],
    ]
    assert Reset("shift", -3).describe() == "shift -3"
    assert Reset("earliest").describe() == "to earliest"


def test_a_description_shows_members_their_partitions_and_the_lag() -> None:
    member = Member("m-1", "billing-0", "/10.0.0.7", "pod-a", (("in", 0), ("in", 2)))
    description = GroupDescription(
        "g", "STABLE", "CONSUMER", "uniform", "1 broker:9092", (member,),
        (COMMITTED, NEVER_COMMITTED, BEHIND_RETENTION),
    )  # fmt: skip
    lines = describe_lines(description)
    assert lines[0] == (
        "group g: state STABLE, type CONSUMER, assignor uniform, coordinator 1 broker:9092"
    )
    assert lines[1] == "members: 1"
    assert lines[3].split() == ["billing-0", "/10.0.0.7", "pod-a", "m-1", "in[0,2]"]
    assert lines[5].split() == ["in", "0", "40", "100", "60", "billing-0@/10.0.0.7"]
    assert lines[6].split() == ["in", "1", "-", "100", "90", "-"]
    assert lines[-1] == "total lag: 240"
    dead = GroupDescription("h", "DEAD", "CLASSIC", "-", "-", (), ())
    assert describe_lines(dead)[0] == "group h: no such group (no members, no committed offsets)"


@pytest.mark.parametrize(
    "modes", [[], ["--to-earliest", "--to-latest"], ["--shift", "1", "--to-datetime", "1h"]]
)
def test_a_reset_needs_exactly_one_target(modes: list[str]) -> None:
    result = CliRunner().invoke(
        make_cli(FLEET_REGISTRY_LOADER), ["groups", "reset-offsets", "billing", *modes]
    )
    assert result.exit_code == 2
    assert "exactly one of --to-earliest, --to-latest, --to-datetime, --shift" in result.output

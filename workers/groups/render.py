"""What `workers groups describe | reset-offsets` print."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from workers.common.columns import columns
from workers.groups.inspect import GroupDescription, Member
from workers.groups.offsets import PartitionOffsets


def _assignment(member: Member) -> str:
    by_topic: dict[str, list[int]] = {}
    for topic, partition in member.assignment:
        by_topic.setdefault(topic, []).append(partition)
    return " ".join(f"{t}[{','.join(map(str, ps))}]" for t, ps in by_topic.items()) or "-"


def _committed(offsets: PartitionOffsets) -> str:
    return "-" if offsets.committed is None else str(offsets.committed)


def describe_lines(description: GroupDescription) -> list[str]:
    if description.state == "DEAD":
        heading = f"group {description.group}: no such group (no members, no committed offsets)"
    else:
        heading = (
            f"group {description.group}: state {description.state}, type {description.type}, "
            f"assignor {description.assignor}, coordinator {description.coordinator}"
        )
    lines = [
        heading,
        f"members: {len(description.members)}",
    ]
    if description.members:
        rows: list[tuple[str, ...]] = [
            ("CLIENT ID", "HOST", "INSTANCE ID", "MEMBER ID", "ASSIGNED")
        ]
        rows += [
            (m.client_id, m.host, m.instance_id or "-", m.member_id, _assignment(m))
            for m in description.members
        ]
        lines += ["  " + line for line in columns(rows)]
    rows = [("TOPIC", "PARTITION", "COMMITTED", "HIGH", "LAG", "MEMBER")]
    for offsets in description.partitions:
        owner = description.owner(offsets.topic, offsets.partition)
        rows.append(
            (
                offsets.topic,
                str(offsets.partition),
                _committed(offsets),
                str(offsets.high),
                str(offsets.lag),
                f"{owner.client_id}@{owner.host}" if owner else "-",
            )
        )
    total = sum(offsets.lag for offsets in description.partitions)
    return [*lines, *columns(rows, {1, 2, 3, 4}), f"total lag: {total}"]


def reset_lines(
    partitions: Sequence[PartitionOffsets], targets: Mapping[tuple[str, int], int]
) -> list[str]:
    rows = [("TOPIC", "PARTITION", "LOW", "HIGH", "BEFORE", "AFTER", "LAG AFTER")]
    for offsets in partitions:
        after = targets[(offsets.topic, offsets.partition)]
        rows.append(
            (
                offsets.topic,
                str(offsets.partition),
                str(offsets.low),
                str(offsets.high),
                _committed(offsets),
                str(after),
                str(max(offsets.high - after, 0)),
            )
        )
    return columns(rows, {1, 2, 3, 4, 5, 6})

"""A consumer group as Kafka's admin API describes it: members and their assignment, the
committed offsets and the watermarks of the partitions it reads.

`describe_consumer_groups` answers for groups of either protocol: Kafka 4's consumer
protocol (KIP-848, the fleet's: docs/rebalancing.md) and the classic one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

# Public in `confluent_kafka.admin`, but not re-exported for type checkers.
from confluent_kafka.admin._group import ConsumerGroupDescription
from confluent_kafka.admin._listoffsets import ListOffsetsResultInfo, OffsetSpec

from workers.common.kafka_config import admin_configuration
from workers.common.settings import Settings
from workers.groups.offsets import PartitionOffsets

ADMIN_TIMEOUT_SECONDS: Final = 15.0
T = TypeVar("T")


class GroupError(RuntimeError):
    """Kafka refused or failed an admin request; the message says which."""


@dataclass(frozen=True)
class Member:
    member_id: str
    client_id: str
    host: str
    instance_id: str | None
    assignment: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class GroupDescription:
    group: str
    state: str
    type: str
    assignor: str
    coordinator: str
    members: tuple[Member, ...]
    partitions: tuple[PartitionOffsets, ...]

    def owner(self, topic: str, partition: int) -> Member | None:
        for member in self.members:
            if (topic, partition) in member.assignment:
                return member
        return None


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient(admin_configuration(settings))


def _result(future: Future[T], what: str) -> T:
    try:
        return future.result(timeout=ADMIN_TIMEOUT_SECONDS)
    except KafkaException as error:
        raise GroupError(f"{what}: {error.args[0].str() if error.args else error}") from None


def _members(described: ConsumerGroupDescription) -> tuple[Member, ...]:
    members = []
    for member in described.members or []:
        assignment = member.assignment.topic_partitions if member.assignment else []
        members.append(
            Member(
                member.member_id,
                member.client_id,
                member.host,
                member.group_instance_id,
                tuple(sorted((tp.topic, tp.partition) for tp in assignment)),
            )
        )
    return tuple(sorted(members, key=lambda m: (m.assignment, m.member_id)))


def committed_offsets(admin: AdminClient, group: str) -> dict[tuple[str, int], int]:
    """Every committed offset of `group`, by (topic, partition)."""
    futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])
    listed: ConsumerGroupTopicPartitions = _result(futures[group], f"committed offsets of {group}")
    return {
        (tp.topic, tp.partition): tp.offset
        for tp in listed.topic_partitions or []
        if tp.error is None and tp.offset >= 0
    }


def topic_partitions(admin: AdminClient, topics: Iterable[str]) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for topic in sorted(set(topics)):
        metadata = admin.list_topics(topic, timeout=ADMIN_TIMEOUT_SECONDS).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise GroupError(f"topic {topic!r} does not exist")
        found += [(topic, index) for index in sorted(metadata.partitions)]
    return found


def list_offsets(
    admin: AdminClient, partitions: Iterable[tuple[str, int]], spec: OffsetSpec
) -> dict[tuple[str, int], int]:
    wanted = {TopicPartition(topic, index): spec for topic, index in partitions}
    if not wanted:
        return {}
    futures = admin.list_offsets(wanted, request_timeout=ADMIN_TIMEOUT_SECONDS)
    answers: dict[tuple[str, int], int] = {}
    for tp, future in futures.items():
        info: ListOffsetsResultInfo = _result(future, f"offsets of {tp.topic}:{tp.partition}")
        answers[(tp.topic, tp.partition)] = int(info.offset)
    return answers


def offsets_at_time(
    admin: AdminClient, partitions: Iterable[tuple[str, int]], timestamp_ms: int
) -> dict[tuple[str, int], int]:
    """Per partition, the first offset whose message is at or after `timestamp_ms` (-1: none)."""
    return list_offsets(admin, partitions, OffsetSpec.for_timestamp(timestamp_ms))


def partition_offsets(
    admin: AdminClient,
    partitions: Iterable[tuple[str, int]],
    committed: Mapping[tuple[str, int], int],
) -> tuple[PartitionOffsets, ...]:
    wanted = sorted(set(partitions))
    lows = list_offsets(admin, wanted, OffsetSpec.earliest())  # type: ignore[no-untyped-call]
    highs = list_offsets(admin, wanted, OffsetSpec.latest())  # type: ignore[no-untyped-call]
    return tuple(
        PartitionOffsets(topic, index, lows[(topic, index)], highs[(topic, index)],
                         committed.get((topic, index)))
        for topic, index in wanted
    )  # fmt: skip


def describe_group(
    settings: Settings, group: str, topics: Iterable[str], admin: AdminClient | None = None
) -> GroupDescription:
    """`group` with the partitions of `topics`, of its committed offsets and of its members'
    assignments."""
    client = admin or admin_client(settings)
    futures = client.describe_consumer_groups([group], request_timeout=ADMIN_TIMEOUT_SECONDS)
    described: ConsumerGroupDescription = _result(futures[group], f"describing {group}")
    members = _members(described)
    committed = committed_offsets(client, group)
    assigned = {pair for member in members for pair in member.assignment}
    read_topics = {*topics, *(topic for topic, _ in committed), *(topic for topic, _ in assigned)}
    coordinator = described.coordinator
    return GroupDescription(
        group=group,
        state=_name(getattr(described, "state", None)),  # absent when the broker omits it
        type=_name(getattr(described, "type", None)),
        assignor=described.partition_assignor or "-",
        coordinator=f"{coordinator.id} {coordinator.host}:{coordinator.port}"
        if coordinator is not None
        else "-",
        members=members,
        partitions=partition_offsets(client, topic_partitions(client, read_topics), committed),
    )


def alter_offsets(admin: AdminClient, group: str, targets: Mapping[tuple[str, int], int]) -> None:
    """Commit `targets` for `group` (Kafka refuses while the group has members)."""
    request = ConsumerGroupTopicPartitions(
        group, [TopicPartition(topic, index, offset) for (topic, index), offset in targets.items()]
    )
    futures = admin.alter_consumer_group_offsets([request], request_timeout=ADMIN_TIMEOUT_SECONDS)
    altered: ConsumerGroupTopicPartitions = _result(
        futures[group], f"resetting the offsets of {group}"
    )
    for tp in altered.topic_partitions or []:
        if tp.error is not None:
            raise GroupError(f"resetting {tp.topic}:{tp.partition} of {group}: {tp.error.str()}")


def _name(value: Any) -> str:
    return str(getattr(value, "name", value or "-"))

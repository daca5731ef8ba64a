"""A consumer group's progress as the chaos suite watches it: committed offsets and lag.

`GroupReader` reads a group's committed offsets without joining it, with
`isolation.level=read_uncommitted`: the last *stable* commit, at once. (With
`read_committed`, librdkafka asks for stable offsets only and waits while a transaction with
offsets of the group is open: after a kill -9 of an exactly-once worker that can be until the
broker's transaction timeout, docs/chaos.md, Findings.) The lag of a partition is its high
watermark minus the committed offset; a partition without a commit counts from its low
watermark (where the group would start reading).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from confluent_kafka import Consumer, KafkaException, TopicPartition

from harness.waiting import wait_for
from workers.common.settings import Settings

CALL_TIMEOUT_SECONDS: Final = 2.0


@dataclass(frozen=True)
class Watched:
    """One consumer group and its input topic, named as the report names it."""

    name: str
    group: str
    topic: str
    #: Messages a second the stream feeds this group.
    per_second: int


class GroupReader:
    def __init__(self, settings: Settings, watched: Watched) -> None:
        self.watched = watched
        self.__consumer = Consumer(
            {
                **settings.kafka_client_config(),
                "group.id": watched.group,
                "enable.auto.commit": False,
                "isolation.level": "read_uncommitted",
                "log_level": 0,
            }
        )
        self.__partitions: list[TopicPartition] = []

    def __topic_partitions(self) -> list[TopicPartition]:
        if not self.__partitions:
            topic = self.watched.topic
            metadata = self.__consumer.list_topics(topic, timeout=CALL_TIMEOUT_SECONDS)
            found = metadata.topics[topic].partitions
            self.__partitions = [TopicPartition(topic, p) for p in sorted(found)]
        return self.__partitions

    def committed(self) -> dict[int, int]:
        """Committed offset per partition; partitions without a commit are absent."""
        found = self.__consumer.committed(self.__topic_partitions(), timeout=CALL_TIMEOUT_SECONDS)
        return {tp.partition: tp.offset for tp in found if tp.error is None and tp.offset >= 0}

    def lag(self) -> int:
        committed = self.committed()
        lag = 0
        for partition in self.__topic_partitions():
            low, high = self.__consumer.get_watermark_offsets(
                partition, timeout=CALL_TIMEOUT_SECONDS, cached=False
            )
            lag += max(high - committed.get(partition.partition, low), 0)
        return lag

    def close(self) -> None:
        self.__consumer.close()


class CommitWatch:
    """Polls every watched group's committed offsets (summed) to see it make progress."""

    def __init__(self, settings: Settings, watched: Sequence[Watched]) -> None:
        self.__readers = [GroupReader(settings, w) for w in watched]

    def totals(self) -> dict[str, int]:
        """Each group's committed offsets, summed; -1 for a group that cannot be read now."""
        found: dict[str, int] = {}
        for reader in self.__readers:
            try:
                found[reader.watched.name] = sum(reader.committed().values())
            except (KafkaException, KeyError):
                found[reader.watched.name] = -1
        return found

    def wait_past(self, baseline: Mapping[str, int], what: str, timeout: float) -> dict[str, float]:
        """Poll (every 50 ms) until every group has committed past its `baseline` total; when
        each was first seen to (`time.monotonic()`)."""
        seen: dict[str, float] = {}

        def all_seen() -> bool:
            for name, total in self.totals().items():
                if name not in seen and total > baseline.get(name, 0):
                    seen[name] = time.monotonic()
            return len(seen) == len(self.__readers)

        wait_for(all_seen, timeout, what, interval=0.05)
        return seen

    def close(self) -> None:
        for reader in self.__readers:
            reader.close()

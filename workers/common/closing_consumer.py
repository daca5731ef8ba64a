"""A consumer that says it is closed from the moment `close()` begins (docs/rebalancing.md,
Closing).

Under the consumer group protocol a member that closes while an assignment change is on its
way gives up its partitions in steps: first the ones the broker already moved, then the rest
as it leaves. After each step Arroyo's revocation callback rebuilds the strategy chain for the
partitions the member still holds, unless `tell()` raises `InvalidState` (a `RuntimeError`).
A chain rebuilt inside `close()` has nothing to do but join when the next step revokes its
partitions, and that join commits as a member that is leaving: the broker answers
`UNKNOWN_MEMBER_ID`, and the exception replaces the one that ended the worker (a DLQ limit
lost its message that way). So `tell()` raises while closing, as it does once closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from arroyo.backends.kafka import KafkaConsumer
from arroyo.backends.kafka.consumer import InvalidState, KafkaConsumerState
from arroyo.types import Partition


class ClosingKafkaConsumer(KafkaConsumer):
    """Arroyo's `KafkaConsumer`, whose `tell()` raises `InvalidState` once `close()` began."""

    def __init__(self, configuration: Mapping[str, Any]) -> None:
        super().__init__(configuration)
        self.__closing = False

    def tell(self) -> Mapping[Partition, int]:
        if self.__closing:
            raise InvalidState(KafkaConsumerState.CLOSED)
        return super().tell()

    def close(self, timeout: float | None = None) -> None:
        self.__closing = True
        super().close(timeout)

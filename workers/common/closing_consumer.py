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

Partitions can also be *assigned* inside `close()`: ones the broker handed this member while
it was not polling (another member left or died just before). Arroyo's assignment callback
first reads their committed offsets, with no timeout, and librdkafka, closing, never answers:
`close()` hung for good, and the worker with it (a graceful shutdown as much as an error).
An assignment that arrives while closing is therefore not passed to Arroyo;
confluent-kafka takes it by itself, and librdkafka gives it up again as it leaves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from arroyo.backends.kafka import KafkaConsumer
from arroyo.backends.kafka.consumer import InvalidState, KafkaConsumerState
from arroyo.types import Partition
from confluent_kafka import Consumer as ConfluentConsumer
from confluent_kafka import TopicPartition

logger = logging.getLogger(__name__)

RebalanceCallback = Callable[[Any, list[TopicPartition]], None]


class AssignmentGate:
    """librdkafka's consumer, as Arroyo's `KafkaConsumer` holds it, except that assignments
    are not passed to Arroyo's callback once `closing()` is true. It sees every rebalance
    callback, so it also counts them (`rebalances`)."""

    def __init__(self, wrapped: Any, closing: Callable[[], bool]) -> None:
        #: The consumer everything is forwarded to (tests put a stand-in here).
        self.wrapped = wrapped
        self.__closing = closing
        #: How many rebalance callbacks librdkafka has served, empty ones included (Arroyo
        #: skips an empty assignment; librdkafka paused and resumed fetching for it all the
        #: same, docs/rebalancing.md, Kept partitions).
        self.rebalances = 0

    def subscribe(
        self,
        topics: Sequence[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> None:
        # Partitions Arroyo never saw: their revocation is not passed on either.
        withheld: set[tuple[str, int]] = set()

        def assigned(consumer: Any, partitions: list[TopicPartition]) -> None:
            self.rebalances += 1
            if self.__closing():
                withheld.update((tp.topic, tp.partition) for tp in partitions)
                logger.info(
                    "partitions assigned while closing; left unread",
                    extra={"partitions": len(partitions)},
                )
                return
            if on_assign is not None:
                on_assign(consumer, partitions)

        def revoked(consumer: Any, partitions: list[TopicPartition]) -> None:
            self.rebalances += 1
            known = [tp for tp in partitions if (tp.topic, tp.partition) not in withheld]
            withheld.difference_update((tp.topic, tp.partition) for tp in partitions)
            if on_revoke is not None and (known or not partitions):
                on_revoke(consumer, known)

        self.wrapped.subscribe(list(topics), on_assign=assigned, on_revoke=revoked)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


class ClosingKafkaConsumer(KafkaConsumer):
    """Arroyo's `KafkaConsumer`, whose `tell()` raises `InvalidState` once `close()` began and
    which takes no assignment from then on."""

    def __init__(self, configuration: Mapping[str, Any]) -> None:
        super().__init__(configuration)
        self.__closing = False
        # Arroyo keeps librdkafka's consumer private; checked so an upgrade fails loudly.
        confluent = getattr(self, "_KafkaConsumer__consumer", None)
        if not isinstance(confluent, ConfluentConsumer):
            raise RuntimeError(
                "this sentry-arroyo version does not keep its confluent-kafka consumer in "
                "KafkaConsumer.__consumer; ClosingKafkaConsumer needs updating"
            )
        self.__gate = AssignmentGate(confluent, lambda: self.__closing)
        setattr(self, "_KafkaConsumer__consumer", self.__gate)  # noqa: B010

    @property
    def confluent(self) -> Any:
        """librdkafka's consumer itself (for the calls Arroyo does not expose)."""
        return self.__gate.wrapped

    @property
    def rebalances(self) -> int:
        """How many rebalance callbacks librdkafka has served (empty ones included)."""
        return self.__gate.rebalances

    def tell(self) -> Mapping[Partition, int]:
        if self.__closing:
            raise InvalidState(KafkaConsumerState.CLOSED)
        return super().tell()

    def close(self, timeout: float | None = None) -> None:
        self.__closing = True
        super().close(timeout)

"""A static group member (`--group-instance-id`) restarted after a crash waits for its old self.

With the consumer group protocol (KIP-848) the broker refuses a static member id while the
previous incarnation that holds it, killed without leaving, still has a live session
(UNRELEASED_INSTANCE_ID, fatal in librdkafka). Instead of exiting and crash-looping, a worker
with a static id first waits until the group no longer lists that id: at most the session
timeout (6 s on the local stack) after the crash. Its partitions meanwhile stay with the dead
incarnation, then move when its session expires (docs/rebalancing.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from typing import Final

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from workers.common.kafka_config import admin_configuration
from workers.common.settings import Settings

logger = logging.getLogger(__name__)

#: Several session timeouts: longer means another live process really holds the id.
PREVIOUS_INCARNATION_TIMEOUT_SECONDS: Final = 60.0
POLL_SECONDS: Final = 0.5
ADMIN_TIMEOUT_SECONDS: Final = 10.0

#: The static member ids the group lists now.
ListInstanceIds = Callable[[], Collection[str]]


def group_instance_ids(settings: Settings, group: str) -> ListInstanceIds:
    admin = AdminClient(admin_configuration(settings))

    def listed() -> Collection[str]:
        future = admin.describe_consumer_groups([group], request_timeout=ADMIN_TIMEOUT_SECONDS)[
            group
        ]
        try:
            description = future.result()
        except KafkaException:
            return ()  # unknown group, or not answerable now: joining will tell
        return {m.group_instance_id for m in description.members if m.group_instance_id}

    return listed


def wait_for_previous_incarnation(
    instance_id: str,
    listed: ListInstanceIds,
    timeout: float = PREVIOUS_INCARNATION_TIMEOUT_SECONDS,
    poll: float = POLL_SECONDS,
) -> bool:
    """Wait until the group stops listing `instance_id`; False when it still does at the
    deadline (the join then fails with the broker's own error)."""
    deadline = time.monotonic() + timeout
    announced = False
    while instance_id in listed():
        if time.monotonic() >= deadline:
            return False
        if not announced:
            logger.warning(
                "the group still lists this static member id (a previous incarnation killed "
                "without leaving); joining once its session expires",
                extra={"group_instance_id": instance_id},
            )
            announced = True
        time.sleep(poll)
    return True

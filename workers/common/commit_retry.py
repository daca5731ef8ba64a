"""Offset commits that ride out a Kafka broker failover (docs/rebalancing.md, Broker loss).

Arroyo's synchronous commit retries `REQUEST_TIMED_OUT`, `NOT_COORDINATOR`, `_WAIT_COORD` and
`COORDINATOR_LOAD_IN_PROGRESS` three times, a second apart. When the broker holding the group
coordinator dies or stops answering, librdkafka's own `_TIMED_OUT` (or a transport error, or
`COORDINATOR_NOT_AVAILABLE` while the coordinator moves) ended the worker instead. Committing
the same offsets again is harmless, so these are retried with backoff for up to
`DEFAULT_COMMIT_OUTAGE_SECONDS`, long enough for KRaft to move leadership and the coordinator
to a live broker. Errors that say this member lost its partitions are never retried.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from arroyo.types import Partition
from confluent_kafka import KafkaError, KafkaException

from workers.common.closing_consumer import ClosingKafkaConsumer
from workers.common.retry_window import RetryWindow

DEFAULT_COMMIT_OUTAGE_SECONDS: Final = 30.0
RETRIED_COMMIT_ERRORS: Final = frozenset(
    {
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._WAIT_COORD,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    }
)


def is_failover_error(error: BaseException) -> bool:
    return (
        isinstance(error, KafkaException)
        and bool(error.args)
        and isinstance(error.args[0], KafkaError)
        and error.args[0].code() in RETRIED_COMMIT_ERRORS
    )


def commit_failover_window(seconds: float = DEFAULT_COMMIT_OUTAGE_SECONDS) -> RetryWindow:
    return RetryWindow(is_failover_error, seconds, "offset commit failed")


class FailoverKafkaConsumer(ClosingKafkaConsumer):
    """Arroyo's `KafkaConsumer`, its commits retried through a broker failover (and `tell()`
    refused once `close()` began, see `closing_consumer`)."""

    def __init__(
        self, configuration: Mapping[str, Any], commit_window: RetryWindow | None = None
    ) -> None:
        super().__init__(configuration)
        self.__window = commit_window if commit_window is not None else commit_failover_window()

    def commit_offsets(self) -> Mapping[Partition, int] | None:
        return self.__window.run("commit", super().commit_offsets)

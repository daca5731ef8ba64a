"""Offset commits that ride out a Kafka broker failover (docs/rebalancing.md, Broker loss).

Arroyo's synchronous commit retries `REQUEST_TIMED_OUT`, `NOT_COORDINATOR`, `_WAIT_COORD` and
`COORDINATOR_LOAD_IN_PROGRESS` three times, a second apart. When the broker holding the group
coordinator dies or stops answering, librdkafka's own `_TIMED_OUT` (or a transport error, or
`COORDINATOR_NOT_AVAILABLE` while the coordinator moves) ended the worker instead. Committing
the same offsets again is harmless, so these are retried with backoff for up to
`DEFAULT_COMMIT_OUTAGE_SECONDS`, long enough for KRaft to move leadership and the coordinator
to a live broker.

`STALE_MEMBER_EPOCH` is retried too: under the consumer group protocol a commit sent just
as the broker gave this member more partitions carries the epoch before the change, and the
broker asks the member to retry with the epoch its heartbeat brings (librdkafka takes it
without the application polling). A member that lost its partitions is told otherwise
(`UNKNOWN_MEMBER_ID`, `FENCED_MEMBER_EPOCH`, `ILLEGAL_GENERATION`): never retried.
"""

from __future__ import annotations

from typing import Final

from confluent_kafka import KafkaError, KafkaException

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
        KafkaError.STALE_MEMBER_EPOCH,
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

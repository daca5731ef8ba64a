"""What the billing chain needs of the outcomes producer, and which delivery errors it retries."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final, Protocol

from confluent_kafka import KafkaError

logger = logging.getLogger(__name__)

DeliveryCallback = Callable[[Any, Any], None]

#: Delivery errors that are worth producing again (after a backoff) instead of crashing.
RETRIABLE_ERROR_CODES: Final = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TIMED_OUT_QUEUE,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._QUEUE_FULL,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    }
)


def is_retriable(error: KafkaError) -> bool:
    if error.fatal():
        return False
    return bool(error.retriable()) or error.code() in RETRIABLE_ERROR_CODES


class OutcomeProducer(Protocol):
    """What the chain needs of `confluent_kafka.Producer`."""

    def produce_batch(
        self,
        topic: str,
        messages: list[dict[str, Any]],
        partition: int = -1,
        callback: DeliveryCallback | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> int: ...

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        # confluent-kafka's own type is a list of (str, str | bytes | None) pairs.
        headers: Any = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None: ...

    def poll(self, timeout: float = -1) -> int: ...

    def flush(self, timeout: float = -1) -> int: ...


class OutcomeDeliveryError(RuntimeError):
    """Kafka refused an outcome for good; its offset (and everything after) stays uncommitted."""

"""The pieces of exactly-once billing that are not a strategy: the producer and consumer
the chain needs, the errors it raises, and how a Kafka error is classified.

A transaction ends in one of four ways (docs/billing.md, "Exactly once"):
- committed: its outcomes, DLQ copies and input offsets become visible together;
- aborted (`TransactionAborted`): nothing of it is visible; the chain is rebuilt and the
  partitions are read again from the offsets of the last committed transaction;
- fenced (`ProducerFenced`): a newer producer with the same transactional id, or the group
  coordinator (the member lost its partitions), took over; this process must never commit
  again, so it exits non-zero;
- fatal (`FatalProducerError`): the producer cannot go on; the process exits non-zero and
  its restart aborts whatever was left open.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from arroyo.types import Partition
from confluent_kafka import KafkaError, KafkaException

from workers.billing.outcome_producer import OutcomeProducer

#: How long a transaction collects batches before it is committed (chosen with
#: `python -m bench.billing`; docs/benchmarks.md).
DEFAULT_TRANSACTION_INTERVAL_SECONDS: Final = 0.25
#: The longest `init_transactions` may take (it also aborts what a previous holder of the
#: transactional id left open).
DEFAULT_INIT_TIMEOUT_SECONDS: Final = 30.0

#: librdkafka's and the broker's ways of saying "a newer producer owns this transactional id".
FENCED_ERROR_CODES: Final = frozenset(
    {
        KafkaError._FENCED,
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    }
)


class TransactionalProducer(OutcomeProducer, Protocol):
    """What the exactly-once chain needs of a transactional `confluent_kafka.Producer`."""

    def init_transactions(self, timeout: float = -1) -> None: ...

    def begin_transaction(self) -> None: ...

    def send_offsets_to_transaction(
        self, positions: list[Any], group_metadata: Any, timeout: float = -1
    ) -> None: ...

    def commit_transaction(self, timeout: float = -1) -> None: ...

    def abort_transaction(self, timeout: float = -1) -> None: ...


class GroupConsumer(Protocol):
    """What the exactly-once chain needs of the consumer that feeds it (`RunConsumer`)."""

    def group_metadata(self) -> object: ...

    def tell(self) -> Mapping[Partition, int]: ...

    def seek(self, offsets: Mapping[Partition, int]) -> None: ...

    @property
    def epoch(self) -> int: ...


class TransactionAborted(Exception):
    """The open transaction was aborted: read its partitions again from the last commit."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"transaction aborted ({reason}): {detail}")
        self.reason = reason


class ProducerFenced(RuntimeError):
    """Another producer owns this transactional id, or the group moved on: never commit again."""


class FatalProducerError(RuntimeError):
    """The transactional producer hit a fatal error; only a new process can go on."""


def kafka_error(exception: KafkaException) -> KafkaError:
    """The `KafkaError` a `KafkaException` carries (every confluent-kafka call raises one)."""
    error = exception.args[0] if exception.args else None
    if isinstance(error, KafkaError):
        return error
    return KafkaError(KafkaError._FAIL, str(exception))


def is_fenced(error: KafkaError) -> bool:
    return error.code() in FENCED_ERROR_CODES


def raise_if_fatal(error: KafkaError, doing: str) -> None:
    """Raise `ProducerFenced` / `FatalProducerError` for an error no retry or abort can fix."""
    if is_fenced(error):
        raise ProducerFenced(f"{doing}: the producer was fenced: {error.name()} ({error.str()})")
    if error.fatal():
        raise FatalProducerError(f"{doing}: fatal producer error: {error.name()} ({error.str()})")


@dataclass(frozen=True)
class ExactlyOnce:
    """The billing chain's exactly-once mode: what it needs besides the at-least-once chain."""

    # Builds the transactional producer (once per process); the chain initialises it.
    producer_factory: Callable[[], TransactionalProducer]
    # The consumer feeding the chain: its group metadata goes with the offsets (KIP-447),
    # and an aborted transaction seeks it back.
    consumer: GroupConsumer
    transaction_interval_seconds: float = DEFAULT_TRANSACTION_INTERVAL_SECONDS
    init_timeout_seconds: float = DEFAULT_INIT_TIMEOUT_SECONDS
    # Told the offsets of every committed transaction (the consumer never sees them).
    note_committed: Callable[[Mapping[tuple[str, int], int]], None] | None = None

    def __post_init__(self) -> None:
        if self.transaction_interval_seconds <= 0:
            raise ValueError("transaction_interval_seconds must be positive")

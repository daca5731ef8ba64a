"""Fakes for the exactly-once chain: a transactional producer and the consumer feeding it.

`FakeTransactionalProducer` models what the chain relies on: messages produced inside a
transaction become visible (`committed`) only when it commits, together with the offsets sent
to it; an abort discards both. Tests script failures: a delivery error, a commit refused with
an abortable, fenced or fatal error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from arroyo.types import Partition
from confluent_kafka import KafkaError, KafkaException

from tests.support.billing_fakes import FakeDelivered

DeliveryCallback = Any


class FakeTransactionalProducer:
    def __init__(self) -> None:
        self.initialised = 0
        self.open = False
        # (topic, value, headers) of the open transaction, with their delivery callbacks.
        self.pending: list[tuple[DeliveryCallback, str, bytes, list[tuple[str, bytes]]]] = []
        self.in_transaction: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []
        self.offsets: dict[tuple[str, int], int] = {}
        # What read_committed readers see, and the offsets committed with it.
        self.committed: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []
        self.committed_offsets: dict[tuple[str, int], int] = {}
        self.group_metadata: list[object] = []
        self.commits = 0
        self.aborts = 0
        # Scripted failures.
        self.fail_next_delivery: KafkaError | None = None
        self.commit_error: KafkaError | None = None

    # -- transactions ---------------------------------------------------------------------

    def init_transactions(self, timeout: float = -1) -> None:
        self.initialised += 1

    def begin_transaction(self) -> None:
        assert self.initialised, "begin_transaction before init_transactions"
        assert not self.open, "a transaction is already open"
        self.open = True

    def send_offsets_to_transaction(
        self, positions: list[Any], group_metadata: Any, timeout: float = -1
    ) -> None:
        assert self.open
        self.group_metadata.append(group_metadata)
        for position in positions:
            self.offsets[(position.topic, position.partition)] = position.offset

    def commit_transaction(self, timeout: float = -1) -> None:
        assert self.open
        self.poll(0)
        if self.commit_error is not None:
            error, self.commit_error = self.commit_error, None
            raise KafkaException(error)
        self.committed.extend(self.in_transaction)
        self.committed_offsets.update(self.offsets)
        self.commits += 1
        self.__end()

    def abort_transaction(self, timeout: float = -1) -> None:
        self.aborts += 1
        self.pending.clear()
        self.__end()

    def __end(self) -> None:
        self.open = False
        self.in_transaction = []
        self.offsets = {}

    # -- producing ------------------------------------------------------------------------

    def produce_batch(
        self,
        topic: str,
        messages: list[dict[str, Any]],
        partition: int = -1,
        callback: DeliveryCallback | None = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> int:
        assert self.open, "produced outside a transaction"
        for item in messages:
            self.pending.append((on_delivery, topic, item["value"], []))
        return len(messages)

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        headers: Any = None,
        on_delivery: DeliveryCallback | None = None,
    ) -> None:
        assert self.open, "produced outside a transaction"
        assert value is not None
        self.pending.append((on_delivery, topic, value, list(headers or [])))

    def poll(self, timeout: float = -1) -> int:
        pending, self.pending = self.pending, []
        for callback, topic, value, headers in pending:
            error, self.fail_next_delivery = self.fail_next_delivery, None
            if error is None:
                self.in_transaction.append((topic, value, headers))
            callback(error, FakeDelivered(value))
        return len(pending)

    def flush(self, timeout: float = -1) -> int:
        self.poll(0)
        return 0

    def values(self, topic: str) -> list[bytes]:
        return [value for name, value, _ in self.committed if name == topic]


class FakeGroupConsumer:
    """The consumer side: its assignment, its seeks and its epoch (see `RunConsumer`)."""

    def __init__(self, assignment: Mapping[Partition, int]) -> None:
        self.positions = dict(assignment)
        self.seeks: list[dict[Partition, int]] = []
        self.epoch = 0

    def group_metadata(self) -> object:
        return ("group-metadata", self.epoch)

    def tell(self) -> Mapping[Partition, int]:
        return self.positions

    def seek(self, offsets: Mapping[Partition, int]) -> None:
        self.seeks.append(dict(offsets))
        self.positions.update(offsets)
        self.epoch += 1

"""`RewindOnAbort`: the head of the exactly-once chain; an aborted transaction is read again."""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping

from arroyo.processing.strategies.abstract import ProcessingStrategy
from arroyo.types import BrokerValue, Message, Partition

from workers.billing.transactions import GroupConsumer, TransactionAborted
from workers.common.message_runs import MessageRun

logger = logging.getLogger(__name__)


class RewindOnAbort(ProcessingStrategy[MessageRun]):
    """Runs the chain `build_chain()` builds; when it aborts a transaction, starts it over.

    On `TransactionAborted` the chain is terminated (its batches, carried runs and open
    aggregation windows are dropped: none of it was committed), every assigned partition is
    sought back to `committed` (the offsets after the last committed transaction, kept up to
    date by the chain's last step) and a fresh chain is built. Runs fetched before that seek
    (the one Arroyo carries over after a rejection, or polled in the same loop) carry an
    older `MessageRun.epoch` and are dropped here, so nothing is skipped and nothing is
    counted twice.
    """

    def __init__(
        self,
        build_chain: Callable[[], ProcessingStrategy[MessageRun]],
        consumer: GroupConsumer,
        committed: MutableMapping[Partition, int],
    ) -> None:
        self.__build_chain = build_chain
        self.__consumer = consumer
        self.__committed = committed
        self.__chain = build_chain()
        # Runs of an epoch below this were fetched before the last rewind.
        self.__epoch = 0
        self.__closed = False

    def submit(self, message: Message[MessageRun]) -> None:
        assert not self.__closed
        value = message.value
        if isinstance(value, BrokerValue) and value.payload.epoch < self.__epoch:
            return
        try:
            self.__chain.submit(message)
        except TransactionAborted as aborted:
            self.__rewind(aborted)

    def poll(self) -> None:
        try:
            self.__chain.poll()
        except TransactionAborted as aborted:
            self.__rewind(aborted)

    def __rewind(self, aborted: TransactionAborted) -> None:
        self.__chain.terminate()
        assigned = self.__consumer.tell()
        offsets = {
            partition: offset
            for partition, offset in self.__committed.items()
            if partition in assigned
        }
        logger.warning(
            "transaction aborted; reading its partitions again from the last commit",
            extra={"reason": aborted.reason, "partitions": len(offsets)},
        )
        if offsets:
            self.__consumer.seek(offsets)
        self.__epoch = self.__consumer.epoch
        self.__chain = self.__build_chain()

    def close(self) -> None:
        self.__closed = True
        self.__chain.close()

    def terminate(self) -> None:
        self.__closed = True
        self.__chain.terminate()

    def join(self, timeout: float | None = None) -> None:
        try:
            self.__chain.join(timeout)
        except TransactionAborted as aborted:
            # The partitions are going away (rebalance or shutdown): whoever reads them next
            # starts from the last commit, which is all a rewind would do.
            logger.warning("transaction aborted while joining", extra={"reason": aborted.reason})

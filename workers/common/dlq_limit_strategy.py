"""`EnforceDlqLimit`: the head of a chain whose invalid messages Arroyo dead-letters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from arroyo.dlq import InvalidMessage
from arroyo.processing.strategies.abstract import ProcessingStrategy, ProcessingStrategyFactory
from arroyo.types import Commit, Message, Partition, TStrategyPayload

from workers.common.dlq_limit import DlqLimiter, DlqLimitExceeded


class EnforceDlqLimit(ProcessingStrategy[TStrategyPayload]):
    """Counts every `InvalidMessage` the chain raises against the DLQ limits.

    Within them, the `InvalidMessage` goes on to Arroyo, which dead-letters it. Beyond them,
    `DlqLimitExceeded` goes up instead: Arroyo's processor terminates the chain and closes
    the consumer without a commit, so the offset of that message (and of everything after
    it) is never committed, and the process exits non-zero.
    """

    def __init__(self, limiter: DlqLimiter, next_step: ProcessingStrategy[TStrategyPayload]):
        self.__limiter = limiter
        self.__next_step = next_step

    def submit(self, message: Message[TStrategyPayload]) -> None:
        try:
            self.__next_step.submit(message)
        except InvalidMessage as invalid:
            self.__count(invalid)
            raise

    def poll(self) -> None:
        try:
            self.__next_step.poll()
        except InvalidMessage as invalid:
            self.__count(invalid)
            raise

    def join(self, timeout: float | None = None) -> None:
        try:
            self.__next_step.join(timeout)
        except InvalidMessage as invalid:
            self.__count(invalid)
            raise

    def close(self) -> None:
        self.__next_step.close()

    def terminate(self) -> None:
        self.__next_step.terminate()

    def __count(self, invalid: InvalidMessage) -> None:
        try:
            self.__limiter.record(invalid.partition, invalid.offset, invalid.reason)
        except DlqLimitExceeded as exceeded:
            # The invalid message is the cause the error names, not a second failure.
            raise exceeded from None


class DlqLimitFirst(ProcessingStrategyFactory[Any]):
    """Puts `EnforceDlqLimit` at the head of every chain the inner factory builds, and starts
    the limiter's counts afresh on every assignment."""

    def __init__(self, limiter: DlqLimiter, inner: ProcessingStrategyFactory[Any]) -> None:
        self.__limiter = limiter
        self.__inner = inner

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[Any]:
        self.__limiter.reset(partitions)
        return EnforceDlqLimit(
            self.__limiter, self.__inner.create_with_partitions(commit, partitions)
        )

    def shutdown(self) -> None:
        self.__inner.shutdown()

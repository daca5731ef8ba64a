"""`LimitDeadLetters`: a batch's invalid messages are counted against the DLQ limits first."""

from __future__ import annotations

from arroyo.processing.strategies.abstract import ProcessingStrategy
from arroyo.types import Message

from workers.billing.batch import OutcomeBatch
from workers.common.dlq_limit import DlqLimiter


class LimitDeadLetters(ProcessingStrategy[OutcomeBatch]):
    """Counts each batch's dead letters with the `DlqLimiter` before the next step sees it.

    Beyond a limit, `DlqLimitExceeded` goes up from `submit` and the batch never reaches the
    next step: none of its outcomes, DLQ copies or offsets are produced, and nothing after it
    is either. At least once, its offsets are never committed; exactly once, it never enters
    a transaction, and the open one (earlier batches) is left uncommitted when the processor
    terminates the chain (the broker aborts it, or the restarted process at once). A batch
    the next step pushes back (`MessageRejected`) is submitted again: it is counted once.
    """

    def __init__(self, limiter: DlqLimiter, next_step: ProcessingStrategy[OutcomeBatch]) -> None:
        self.__limiter = limiter
        self.__next_step = next_step
        self.__counted: OutcomeBatch | None = None

    def submit(self, message: Message[OutcomeBatch]) -> None:
        batch = message.payload
        if batch is not self.__counted:
            for letter in batch.dead_letters:
                offset = letter.message.offset()
                assert offset is not None
                self.__limiter.record(letter.partition, offset, letter.reason)
            self.__counted = batch
        self.__next_step.submit(message)

    def poll(self) -> None:
        self.__next_step.poll()

    def join(self, timeout: float | None = None) -> None:
        self.__next_step.join(timeout)

    def close(self) -> None:
        self.__next_step.close()

    def terminate(self) -> None:
        self.__next_step.terminate()

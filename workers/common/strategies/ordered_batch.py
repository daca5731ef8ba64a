"""`OrderedBatchStep`: Arroyo's `BatchStep`, except that a filtered message never overtakes
the batch being built.

Arroyo's `BatchStep` forwards a `FilteredPayload` (the offset of a message that went to the
DLQ) at once, ahead of the messages it holds in its current batch; `CommitOffsets` then
commits past messages that are not persisted yet, and a crash loses them. Here a filtered
message joins the batch being built (its offsets are committed with the batch, after it) and
goes on alone only when no batch is being built.

A batch is full at `max_batch_size` units (each value weighs `compute_batch_size(value)`,
default 1) or `max_batch_time` seconds after its first value; it is then submitted as a
`ValuesBatch` whose committable is the highest offsets of everything it holds. A batch the
next step rejects (`MessageRejected`) stays here and is offered again; meanwhile `submit`
raises `MessageRejected` too, so nothing is reordered or dropped.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, MutableMapping
from datetime import datetime
from typing import Generic, TypeVar

from arroyo.processing.strategies.abstract import MessageRejected, ProcessingStrategy
from arroyo.processing.strategies.batching import ValuesBatch
from arroyo.types import BaseValue, FilteredPayload, Message, Partition, Value

TPayload = TypeVar("TPayload")

#: Pause between offers of a rejected batch while joining (Arroyo's processor pauses 10 ms).
BACKPRESSURE_PAUSE_SECONDS = 0.01


def merge_offsets(into: MutableMapping[Partition, int], offsets: Mapping[Partition, int]) -> None:
    """Keep the highest offset per partition."""
    for partition, offset in offsets.items():
        if offset > into.get(partition, -1):
            into[partition] = offset


class OrderedBatchStep(ProcessingStrategy[FilteredPayload | TPayload], Generic[TPayload]):
    def __init__(
        self,
        max_batch_size: int,
        max_batch_time: float,
        next_step: ProcessingStrategy[FilteredPayload | ValuesBatch[TPayload]],
        compute_batch_size: Callable[[BaseValue[TPayload]], int] = lambda _: 1,
    ) -> None:
        self.__max_size = max_batch_size
        self.__max_time = max_batch_time
        self.__next_step = next_step
        self.__weight = compute_batch_size
        self.__values: list[BaseValue[TPayload]] = []
        self.__size = 0
        self.__offsets: dict[Partition, int] = {}
        self.__timestamp: datetime | None = None
        self.__deadline = 0.0
        self.__closed = False

    def submit(self, message: Message[FilteredPayload | TPayload]) -> None:
        assert not self.__closed
        self.__flush(force=False)  # a rejection leaves the message with the caller
        if isinstance(message.payload, FilteredPayload):
            if self.__values:
                merge_offsets(self.__offsets, message.committable)
            else:
                self.__next_step.submit(message)  # type: ignore[arg-type]
            return
        value: BaseValue[TPayload] = message.value  # type: ignore[assignment]
        if not self.__values:
            self.__deadline = time.monotonic() + self.__max_time
        self.__values.append(value)
        self.__size += self.__weight(value)
        merge_offsets(self.__offsets, value.committable)
        self.__timestamp = value.timestamp

    def poll(self) -> None:
        assert not self.__closed
        with contextlib.suppress(MessageRejected):
            self.__flush(force=False)
        self.__next_step.poll()

    def __flush(self, force: bool) -> None:
        if not self.__values:
            return
        if not force and self.__size < self.__max_size and time.monotonic() < self.__deadline:
            return
        batch: Value[ValuesBatch[TPayload]] = Value(
            self.__values, dict(self.__offsets), self.__timestamp
        )
        self.__next_step.submit(Message(batch))
        self.__values = []
        self.__size = 0
        self.__offsets = {}
        self.__timestamp = None

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                self.__flush(force=True)
                break
            except MessageRejected:
                if deadline is not None and time.monotonic() >= deadline:
                    break  # the batch is dropped: its offsets are never committed
                self.__next_step.poll()
                time.sleep(BACKPRESSURE_PAUSE_SECONDS)
        self.__next_step.close()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.__next_step.join(remaining)

    def close(self) -> None:
        self.__closed = True

    def terminate(self) -> None:
        self.__closed = True
        self.__next_step.terminate()

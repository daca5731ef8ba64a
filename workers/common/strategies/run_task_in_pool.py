"""`RunTaskInPool`: Arroyo's `RunTaskInThreads`, kept in order, bounded in bytes too, and with
the messages not worth a thread handled on the consumer thread.

- `function` runs in a pool of `threads` for a message for which `in_pool(message)` is true
  (work that releases the GIL: decompression and sha1 of a large value) and at once on the
  consumer thread otherwise (for a 4 KiB chunk the hand-off costs three times the work).
- Results go to the next step in submission order. An `InvalidMessage` raised by `function`
  (in the pool or not) is raised from `poll` (or `join`) once every earlier message went on,
  with the partition and offset `function` gave it, so the processor dead-letters the right
  message; a `FilteredPayload` with its offset then takes its place in the order, so its
  offset is committed only after every earlier message's.
- At most `max_pending` messages weighing about `max_pending_bytes` (`weigh`) wait here;
  beyond that `submit` raises `MessageRejected` and the processor pauses the consumer. One
  message heavier than the limit is accepted when nothing else waits.
- A result the next step rejects stays at the head and is offered again on the next `poll`
  (Arroyo's `RunTaskInThreads` drops it and raises `MessageRejected` out of `poll`).
- `join` forwards what finishes before its timeout, drops the rest (never forwarded, so never
  committed) and stops the pool; `terminate` drops everything.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Generic, Protocol, TypeVar, cast

from arroyo.dlq import InvalidMessage
from arroyo.processing.strategies.abstract import MessageRejected, ProcessingStrategy
from arroyo.types import FILTERED_PAYLOAD, FilteredPayload, Message, Value

logger = logging.getLogger(__name__)

TPayload = TypeVar("TPayload")
TResult = TypeVar("TResult")
T_co = TypeVar("T_co", covariant=True)

#: Pause between offers of a rejected result while joining (Arroyo's processor pauses 10 ms).
BACKPRESSURE_PAUSE_SECONDS = 0.01


class _Outcome(Protocol[T_co]):
    def done(self) -> bool: ...

    def result(self, timeout: float | None = None) -> T_co: ...


class _Done(Generic[TResult]):
    """The outcome of work done on the consumer thread (a `Future` costs more than 4 KiB
    of sha1)."""

    __slots__ = ("_error", "_value")

    def __init__(self, value: TResult | None, error: InvalidMessage | None = None) -> None:
        self._value = value
        self._error = error

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> TResult:
        if self._error is not None:
            raise self._error
        return cast(TResult, self._value)


_Entry = tuple[Message[FilteredPayload | TPayload], _Outcome[TResult | None], int]


class RunTaskInPool(ProcessingStrategy[FilteredPayload | TPayload], Generic[TPayload, TResult]):
    def __init__(
        self,
        function: Callable[[Message[TPayload]], TResult],
        next_step: ProcessingStrategy[FilteredPayload | TResult],
        threads: int,
        max_pending: int,
        max_pending_bytes: int,
        in_pool: Callable[[Message[TPayload]], bool] = lambda _: True,
        weigh: Callable[[Message[TPayload]], int] = lambda _: 0,
    ) -> None:
        self.__function = function
        self.__next_step = next_step
        self.__pool = ThreadPoolExecutor(threads, thread_name_prefix="run-task-in-pool")
        self.__max_pending = max_pending
        self.__max_pending_bytes = max_pending_bytes
        self.__in_pool = in_pool
        self.__weigh = weigh
        self.__queue: deque[_Entry[TPayload, TResult]] = deque()
        self.__pending_bytes = 0
        self.__closed = False

    def submit(self, message: Message[FilteredPayload | TPayload]) -> None:
        assert not self.__closed
        if self.__queue and (
            len(self.__queue) >= self.__max_pending
            or self.__pending_bytes >= self.__max_pending_bytes
        ):
            raise MessageRejected
        if isinstance(message.payload, FilteredPayload):
            self.__queue.append((message, _Done(None), 0))
            return
        work = cast("Message[TPayload]", message)
        outcome: _Outcome[TResult | None]
        if self.__in_pool(work):
            outcome = self.__pool.submit(self.__function, work)
        else:
            try:
                outcome = _Done(self.__function(work))
            except InvalidMessage as error:
                outcome = _Done(None, error)
        weight = self.__weigh(work)
        self.__pending_bytes += weight
        self.__queue.append((message, outcome, weight))

    def poll(self) -> None:
        self.__next_step.poll()
        while self.__queue and self.__queue[0][1].done():
            try:
                self.__forward_head()
            except MessageRejected:
                return

    def __forward_head(self) -> None:
        """Submit the head's result to the next step and drop it; raise its `InvalidMessage`
        after putting a filtered message with its offset in its place."""
        message, outcome, weight = self.__queue[0]
        try:
            result = outcome.result()
        except InvalidMessage as error:
            filtered = Message(Value(FILTERED_PAYLOAD, message.committable, message.timestamp))
            if error.needs_commit:
                error.needs_commit = False
                self.__queue[0] = (filtered, _Done(None), 0)
            else:
                self.__queue.popleft()
            self.__pending_bytes -= weight
            raise
        is_filtered = isinstance(message.payload, FilteredPayload)
        forwarded = message if is_filtered else message.replace(result)
        self.__next_step.submit(cast("Message[FilteredPayload | TResult]", forwarded))
        self.__queue.popleft()
        self.__pending_bytes -= weight

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.__queue:
            outcome = self.__queue[0][1]
            if isinstance(outcome, Future):
                wait([outcome], None if deadline is None else max(0.0, deadline - time.monotonic()))
                if not outcome.done():
                    logger.warning(
                        "join timed out; dropping messages not processed yet",
                        extra={"messages": len(self.__queue)},
                    )
                    break
            try:
                self.__forward_head()
            except MessageRejected:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self.__next_step.poll()
                time.sleep(BACKPRESSURE_PAUSE_SECONDS)
        self.__pool.shutdown(wait=False, cancel_futures=True)
        self.__next_step.close()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.__next_step.join(remaining)

    def close(self) -> None:
        self.__closed = True

    def terminate(self) -> None:
        self.__closed = True
        self.__pool.shutdown(wait=False, cancel_futures=True)
        self.__next_step.terminate()

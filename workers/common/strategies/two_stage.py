"""`TwoStagePipeline`: `first` then `second` on each message, each stage in a thread of its
own, so that stage one of a message overlaps stage two of the one before (blob-ingest: batch
N's storage writes while batch N-1's transaction commits).

- Stage one runs for up to `first_threads` messages at once (blob-ingest: while one batch's
  files are being synced, the next one is looked up and its writes queued, so the disk never
  waits for Python); stage two of a message starts after its own stage one and after stage
  two of every earlier message (one thread, first in, first out).
- A message goes on to the next step (`CommitOffsets`) only once its stage two returned, and
  in submission order; a `FilteredPayload` waits its turn as well. So an offset is committed
  only after stage two of its message and of every message before it.
- When a stage fails, no later message runs stage two: each one's stage-one output goes to
  `abandon` (blob-ingest deletes its objects), and the failure is raised from `poll` or `join`
  when its message reaches the head, before anything after it is forwarded.
- Memory: at most `max_in_flight` messages (filtered ones aside, which merge when adjacent)
  are in the step, queued or running; `submit` raises `MessageRejected` beyond that.
- `join(timeout)` forwards what finishes by the deadline; the rest is dropped (never
  forwarded, so never committed; a stage already running may still complete, which the stages
  must tolerate: blob-ingest's are idempotent). `terminate` drops everything.
The stages must not raise `InvalidMessage`: invalid input is refused before this step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Generic, TypeVar, cast

from arroyo.processing.strategies.abstract import MessageRejected, ProcessingStrategy
from arroyo.types import FilteredPayload, Message, Value

from workers.common.strategies.ordered_batch import merge_offsets

logger = logging.getLogger(__name__)

TPayload = TypeVar("TPayload")
TMiddle = TypeVar("TMiddle")
TResult = TypeVar("TResult")

#: Pause between offers of a rejected result while joining (Arroyo's processor pauses 10 ms).
BACKPRESSURE_PAUSE_SECONDS = 0.01


class Abandoned(Exception):
    """Stage two did not run: an earlier message failed, or the step was shut down."""


class TwoStagePipeline(
    ProcessingStrategy[FilteredPayload | TPayload], Generic[TPayload, TMiddle, TResult]
):
    def __init__(
        self,
        first: Callable[[Message[TPayload]], TMiddle],
        second: Callable[[TMiddle], TResult],
        next_step: ProcessingStrategy[FilteredPayload | TResult],
        max_in_flight: int = 2,
        abandon: Callable[[TMiddle], None] = lambda _: None,
        first_threads: int = 1,
    ) -> None:
        if max_in_flight < 1 or first_threads < 1:
            raise ValueError("max_in_flight and first_threads must be at least 1")
        self.__first = first
        self.__second = second
        self.__abandon = abandon
        self.__next_step = next_step
        self.__max_in_flight = max_in_flight
        self.__stage_one = ThreadPoolExecutor(
            first_threads, thread_name_prefix="pipeline-stage-one"
        )
        self.__stage_two = ThreadPoolExecutor(1, thread_name_prefix="pipeline-stage-two")
        # (message, its stage-two future; None for a filtered message)
        self.__queue: deque[tuple[Message[FilteredPayload | TPayload], Future[TResult] | None]]
        self.__queue = deque()
        self.__in_flight = 0
        self.__submitted = 0
        # Sequence number of the first message that failed (or of the shutdown).
        self.__stopped_at: int | None = None
        self.__lock = threading.Lock()
        self.__closed = False

    def submit(self, message: Message[FilteredPayload | TPayload]) -> None:
        assert not self.__closed
        if isinstance(message.payload, FilteredPayload):
            self.__queue_filtered(message)
            return
        if self.__in_flight >= self.__max_in_flight:
            raise MessageRejected
        sequence = self.__submitted
        self.__submitted += 1
        work = cast("Message[TPayload]", message)
        first = self.__stage_one.submit(self.__run_first, sequence, work)
        second = self.__stage_two.submit(self.__run_second, sequence, first)
        self.__queue.append((message, second))
        self.__in_flight += 1

    def __queue_filtered(self, message: Message[FilteredPayload | TPayload]) -> None:
        if self.__queue and self.__queue[-1][1] is None:
            previous = self.__queue.pop()[0]
            offsets = dict(previous.committable)
            merge_offsets(offsets, message.committable)
            message = Message(Value(message.payload, offsets, message.timestamp))
        self.__queue.append((message, None))

    def __stopped_before(self, sequence: int) -> bool:
        with self.__lock:
            return self.__stopped_at is not None and self.__stopped_at < sequence

    def __stop(self, sequence: int) -> None:
        with self.__lock:
            if self.__stopped_at is None or sequence < self.__stopped_at:
                self.__stopped_at = sequence

    def __run_first(self, sequence: int, message: Message[TPayload]) -> TMiddle:
        if self.__stopped_before(sequence):
            raise Abandoned
        try:
            return self.__first(message)
        except BaseException:
            self.__stop(sequence)
            raise

    def __run_second(self, sequence: int, first: Future[TMiddle]) -> TResult:
        middle = first.result()  # stage one's failure is this message's failure
        if self.__stopped_before(sequence):
            self.__abandon(middle)
            raise Abandoned
        try:
            return self.__second(middle)
        except BaseException:
            self.__stop(sequence)
            raise

    def poll(self) -> None:
        self.__next_step.poll()
        while self.__queue:
            second = self.__queue[0][1]
            if second is not None and not second.done():
                return
            try:
                self.__forward_head()
            except MessageRejected:
                return

    def __forward_head(self) -> None:
        message, second = self.__queue[0]
        if second is None:
            self.__next_step.submit(cast("Message[FilteredPayload | TResult]", message))
        else:
            result = second.result()  # raises the stage's failure
            self.__next_step.submit(message.replace(result))
            self.__in_flight -= 1
        self.__queue.popleft()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while self.__queue:
                second = self.__queue[0][1]
                if second is not None:
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    wait([second], left)
                    if not second.done():
                        logger.warning(
                            "join timed out; dropping batches not persisted yet",
                            extra={"in_flight": self.__in_flight},
                        )
                        break
                try:
                    self.__forward_head()
                except MessageRejected:
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    self.__next_step.poll()
                    time.sleep(BACKPRESSURE_PAUSE_SECONDS)
        finally:
            self.__shut_down()
        self.__next_step.close()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        self.__next_step.join(remaining)

    def __shut_down(self) -> None:
        """Nothing queued starts any more; a stage already running finishes in its thread."""
        self.__stop(-1)
        self.__stage_one.shutdown(wait=False, cancel_futures=True)
        self.__stage_two.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.__closed = True

    def terminate(self) -> None:
        self.__closed = True
        self.__shut_down()
        self.__next_step.terminate()

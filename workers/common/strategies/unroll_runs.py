"""`UnrollRuns`: a chain written for single Kafka messages, fed in runs (`message_runs.py`).

Arroyo's processor costs about 20 µs per message it polls; fed one `MessageRun` per partition
and fetch, it pays that once per run, and `UnrollRuns` submits the run's messages to the
per-message chain in a plain loop (blob-ingest at 4 KiB chunks is bound by its consumer
thread: docs/benchmarks.md, Blob ingest).

- Each message goes on as a `Message[KafkaPayload]` with its own offset (so the chain's
  commits stay per message) and the run's timestamp (its last message's; `RawMessage`
  carries none of its own). A missing value becomes empty bytes, as `FetchingKafkaConsumer`
  gives it.
- A message the next step rejects (`MessageRejected`) is where the run resumes when the
  processor submits the run again (it keeps the `BrokerValue`, and wraps it in a new
  `Message` each time).
- An `InvalidMessage` from the next step's `submit`, `poll` or `join` goes to
  `RunDeadLetters` (Arroyo's DLQ policy cannot find a message inside a run), and the chain
  is polled again; the commit the chain was built with waits for those dead letters
  (`UnrolledRuns` gives it `RunDeadLetters.gate`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from arroyo.backends.kafka import KafkaPayload
from arroyo.dlq import InvalidMessage
from arroyo.processing.strategies.abstract import (
    MessageRejected,
    ProcessingStrategy,
    ProcessingStrategyFactory,
)
from arroyo.types import BrokerValue, Commit, Message, Partition

from workers.common.message_runs import MessageRun
from workers.common.run_dead_letters import DeadLetterDeliveryError, RunDeadLetters

logger = logging.getLogger(__name__)


class UnrollRuns(ProcessingStrategy[MessageRun]):
    def __init__(
        self, next_step: ProcessingStrategy[KafkaPayload], dead_letters: RunDeadLetters
    ) -> None:
        self.__next_step = next_step
        self.__dead_letters = dead_letters
        # The run cut short by `MessageRejected`, and the index of the message to go on with.
        self.__resume: tuple[BrokerValue[MessageRun], int] | None = None

    def submit(self, message: Message[MessageRun]) -> None:
        value = message.value
        assert isinstance(value, BrokerValue)
        start = 0
        if self.__resume is not None and self.__resume[0] is value:
            start = self.__resume[1]
        self.__resume = None
        messages = value.payload.messages
        partition, timestamp = value.partition, value.timestamp
        submit = self.__next_step.submit
        for index in range(start, len(messages)):
            raw = messages[index]
            offset = raw.offset()
            assert offset is not None
            payload = KafkaPayload(raw.key(), raw.value() or b"", raw.headers() or [])
            try:
                submit(Message(BrokerValue(payload, partition, offset, timestamp)))
            except MessageRejected:
                self.__resume = (value, index)
                raise
            except InvalidMessage as invalid:
                self.__dead_letters.dead_letter(invalid)

    def poll(self) -> None:
        self.__dead_lettering(self.__next_step.poll)
        self.__dead_letters.poll()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        self.__dead_lettering(lambda: self.__next_step.join(left()))
        self.__dead_letters.flush(left())

    def __dead_lettering(self, call: Callable[[], None]) -> None:
        """`call`, again after each `InvalidMessage` it raises (each is one message done with),
        until it returns."""
        while True:
            try:
                return call()
            except InvalidMessage as invalid:
                self.__dead_letters.dead_letter(invalid)

    def close(self) -> None:
        self.__next_step.close()

    def terminate(self) -> None:
        self.__next_step.terminate()


class UnrolledRuns(ProcessingStrategyFactory[MessageRun]):
    """Feeds the chains of a per-message factory in runs: each chain behind `UnrollRuns`, its
    commits gated on the dead letters (see the module docstring)."""

    def __init__(
        self, inner: ProcessingStrategyFactory[KafkaPayload], dead_letters: RunDeadLetters
    ) -> None:
        self.__inner = inner
        self.__dead_letters = dead_letters

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[MessageRun]:
        self.__dead_letters.reset(partitions)
        chain: ProcessingStrategy[Any] = self.__inner.create_with_partitions(
            self.__dead_letters.gate(commit), partitions
        )
        return UnrollRuns(chain, self.__dead_letters)

    def shutdown(self) -> None:
        try:
            self.__dead_letters.flush()
        except DeadLetterDeliveryError as error:
            # Nothing was committed past them (`gate`): the next process copies them again.
            logger.warning("DLQ copies lost at shutdown", extra={"error": str(error)})
        finally:
            self.__inner.shutdown()

"""The assemble chain:

    RunTask(decode) → RunTaskInThreads(assemble one file; 1 thread, 1 file in flight)
        → CommitOffsets

`decode` turns the message into an `AssembleRequest`; anything else raises `InvalidMessage`
(`invalid_request`), so it goes to the DLQ. The file is assembled in one background thread
(`file_assembly.py`) while the consumer goes on polling: a file of several GiB takes longer
than `max.poll.interval.ms`, and the consumer must stay in its group meanwhile (its
partitions are paused while the file is in flight). One file at a time per consumer process:
that is the worker's concurrency bound. A message reaches `CommitOffsets` only once its
file's state is committed in PostgreSQL and written to the status cache.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from arroyo.backends.kafka import KafkaPayload
from arroyo.dlq import InvalidMessage
from arroyo.processing.strategies import CommitOffsets, RunTask, RunTaskInThreads
from arroyo.processing.strategies.abstract import ProcessingStrategy, ProcessingStrategyFactory
from arroyo.types import BrokerValue, Commit, Message, Partition

from workers.assemble.file_assembly import FileAssembly
from workers.common.assemble_requests import (
    AssembleRequest,
    AssembleRequestError,
    decode_assemble_request,
)
from workers.common.metrics import FleetMetrics

DECODE_STEP: Final = "decode"


class RequestDecoder:
    """Kafka message → `AssembleRequest`, or `InvalidMessage` with the reason."""

    def __init__(self, metrics: FleetMetrics) -> None:
        self.__step = metrics.step(DECODE_STEP)

    def __call__(self, message: Message[KafkaPayload]) -> AssembleRequest:
        self.__step.message_in()
        try:
            with self.__step.time():
                request = decode_assemble_request(message.payload.value)
        except AssembleRequestError as error:
            self.__step.invalid("invalid_request")
            value = message.value
            assert isinstance(value, BrokerValue)
            raise InvalidMessage(
                value.partition, value.offset, reason=error.reason, log_exception=False
            ) from None
        self.__step.message_out()
        return request


class AssembleStrategyFactory(ProcessingStrategyFactory[KafkaPayload]):
    def __init__(
        self,
        decoder: RequestDecoder,
        assembly: FileAssembly,
        on_shutdown: Callable[[], None] = lambda: None,
    ) -> None:
        self.__decoder = decoder
        self.__assembly = assembly
        self.__on_shutdown = on_shutdown

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        return RunTask(
            self.__decoder,
            # max_pending_futures=0: a second file is refused (MessageRejected) while one is
            # in flight, so Arroyo pauses the partitions and keeps polling.
            RunTaskInThreads(
                self.__assembly,
                concurrency=1,
                max_pending_futures=0,
                next_step=CommitOffsets(commit),
            ),
        )

    def shutdown(self) -> None:
        self.__on_shutdown()

"""The blob-ingest chain:

    RunTask(validate) → BatchStep(--max-batch-size, --max-batch-time-ms, --max-batch-bytes)
        → RunTask(persist) → CommitOffsets

`validate` parses the headers, checks the organization, decompresses (bounded) and checks
the sha1; bad input raises `InvalidMessage` with a reason before batching, so it goes to the
DLQ and the rest of the batch goes on. `persist` writes the batch (storage, then one
transaction); only then does the batch reach `CommitOffsets`, so an offset is committed only
after its chunk's object is durable and its rows are committed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from arroyo.backends.kafka import KafkaPayload
from arroyo.dlq import InvalidMessage
from arroyo.processing.strategies import BatchStep, CommitOffsets, RunTask
from arroyo.processing.strategies.abstract import ProcessingStrategy, ProcessingStrategyFactory
from arroyo.processing.strategies.batching import ValuesBatch
from arroyo.types import BaseValue, BrokerValue, Commit, Message, Partition

from workers.blob_ingest.decode import VerifiedChunk, verify_chunk
from workers.blob_ingest.metrics import BlobIngestMetrics
from workers.blob_ingest.persist import BlobWriter
from workers.common.chunk_uploads import ChunkEventError, parse_headers
from workers.common.metrics import FleetMetrics

VALIDATE_STEP = "decode"
PERSIST_STEP = "persist"


class ChunkValidator:
    """Kafka message → `VerifiedChunk`, or `InvalidMessage` with a reason code."""

    def __init__(
        self,
        organization_exists: Callable[[int], bool],
        metrics: FleetMetrics,
        blob_metrics: BlobIngestMetrics,
    ) -> None:
        self.__organization_exists = organization_exists
        self.__step = metrics.step(VALIDATE_STEP)
        self.__blob_metrics = blob_metrics

    def __call__(self, message: Message[KafkaPayload]) -> VerifiedChunk:
        payload = message.payload
        self.__step.message_in()
        self.__blob_metrics.bytes_in.inc(len(payload.value))
        try:
            with self.__step.time():
                headers = parse_headers(payload.headers)
                if not self.__organization_exists(headers.organization_id):
                    raise ChunkEventError(
                        "unknown_organization",
                        f"organization {headers.organization_id} does not exist",
                    )
                chunk = verify_chunk(headers, payload.value)
        except ChunkEventError as error:
            self.__step.invalid(error.code)
            value = message.value
            assert isinstance(value, BrokerValue)
            raise InvalidMessage(
                value.partition, value.offset, reason=error.reason, log_exception=False
            ) from None
        self.__step.message_out()
        self.__blob_metrics.decompressed_bytes.inc(len(chunk.data))
        return chunk


class BatchPersister:
    """A batch of verified chunks → blobs and owners, durable on return."""

    def __init__(
        self, writer: BlobWriter, metrics: FleetMetrics, blob_metrics: BlobIngestMetrics
    ) -> None:
        self.__writer = writer
        self.__step = metrics.step(PERSIST_STEP)
        self.__blob_metrics = blob_metrics

    def __call__(self, message: Message[ValuesBatch[VerifiedChunk]]) -> ValuesBatch[VerifiedChunk]:
        batch = message.payload
        self.__step.message_in(len(batch))
        self.__step.observe_batch_size(len(batch))
        with self.__step.time():
            result = self.__writer.persist([value.payload for value in batch])
        self.__blob_metrics.record(result)
        self.__step.message_out(len(batch))
        return batch


def batch_weight(
    max_batch_size: int, max_batch_bytes: int
) -> Callable[[BaseValue[VerifiedChunk]], int]:
    """Weigh a chunk so that a batch of `max_batch_size` units is full at whichever comes
    first: `max_batch_size` chunks or about `max_batch_bytes` bytes (8 MiB chunks must not
    pile up a thousand to a batch)."""
    bytes_per_unit = max(1, max_batch_bytes // max_batch_size)

    def weight(value: BaseValue[VerifiedChunk]) -> int:
        return max(1, -(-len(value.payload.data) // bytes_per_unit))

    return weight


class BlobIngestStrategyFactory(ProcessingStrategyFactory[KafkaPayload]):
    def __init__(
        self,
        validator: ChunkValidator,
        persister: BatchPersister,
        max_batch_size: int,
        max_batch_time_seconds: float,
        max_batch_bytes: int,
        on_shutdown: Callable[[], None] = lambda: None,
    ) -> None:
        self.__validator = validator
        self.__persister = persister
        self.__max_batch_size = max_batch_size
        self.__max_batch_time_seconds = max_batch_time_seconds
        self.__weight = batch_weight(max_batch_size, max_batch_bytes)
        self.__on_shutdown = on_shutdown

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        return RunTask(
            self.__validator,
            BatchStep(
                self.__max_batch_size,
                self.__max_batch_time_seconds,
                RunTask(self.__persister, CommitOffsets(commit)),
                compute_batch_size=self.__weight,
            ),
        )

    def shutdown(self) -> None:
        self.__on_shutdown()

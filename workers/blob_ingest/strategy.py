"""The blob-ingest chain (docs/blob-ingest.md, Chain):

    RunTaskInPool(validate, --decode-threads)
        → OrderedBatchStep(--max-batch-size, --max-batch-time-ms, --max-batch-bytes)
        → TwoStagePipeline(store, commit, --batches-in-flight) → CommitOffsets

`validate` parses the headers, checks the organization, decompresses (bounded) and checks
the sha1, for chunks of 64 KiB and more in a thread pool (zlib, zstd and hashlib release the
GIL), for smaller ones on the consumer thread; bad input raises `InvalidMessage` with a reason
before batching, so it goes to the DLQ and the rest of the batch goes on. `store` looks the
batch's checksums up and writes the new chunks to storage; `commit` writes the rows in one
transaction, in batch order, while the next batch is being stored. A batch reaches
`CommitOffsets` only after its `commit` and every earlier batch's, so an offset is committed
only after its chunk's object is durable and its rows are committed.

Memory: the decoded bytes held are at most the pending validations (`MAX_PENDING_DECODES`
messages or `MAX_PENDING_DECODE_BYTES` as sent, plus one message), the batch being built and
the batches in flight (`--batches-in-flight`), each `--max-batch-bytes` plus one chunk of 8 MiB
at most: with the defaults (64 MiB, 3 in flight) about 4 x 72 MiB + 24 MiB.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from arroyo.backends.kafka import KafkaPayload
from arroyo.processing.strategies import CommitOffsets
from arroyo.processing.strategies.abstract import ProcessingStrategy, ProcessingStrategyFactory
from arroyo.processing.strategies.batching import ValuesBatch
from arroyo.types import BaseValue, BrokerValue, Commit, Message, Partition

from workers.blob_ingest.decode import VerifiedChunk, verify_chunk
from workers.blob_ingest.metrics import BlobIngestMetrics
from workers.blob_ingest.persist import ChunkWriter, PersistResult, StoredBatch
from workers.common.chunk_uploads import ChunkEventError, parse_headers
from workers.common.dlq import InvalidPayload
from workers.common.metrics import FleetMetrics
from workers.common.strategies import OrderedBatchStep, RunTaskInPool, TwoStagePipeline

VALIDATE_STEP = "decode"
STORE_STEP = "store"
PERSIST_STEP = "persist"
#: Values at least this large are validated in the pool; the hand-off costs more than the
#: sha1 of a smaller one (about 40 µs, the sha1 of 40 KiB, on the development VM).
POOL_MIN_VALUE_BYTES = 64 * 1024
#: Validations waiting for their turn (in the pool or done, behind a slower one).
MAX_PENDING_DECODES = 1000
MAX_PENDING_DECODE_BYTES = 16 * 1024 * 1024
DEFAULT_DECODE_THREADS = 2
DEFAULT_BATCHES_IN_FLIGHT = 3


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
            refused: tuple[str, str] | None = (error.code, error.reason)
        else:
            refused = None
        if refused is not None:
            # Raised outside the `except` and without the decoder's error: its traceback
            # would keep the decoding frames and their buffers (8 MiB of a bomb's output)
            # alive while the InvalidMessage waits its turn in the pool's queue.
            code, reason = refused
            self.__step.invalid(code)
            value = message.value
            assert isinstance(value, BrokerValue)
            raise InvalidPayload(payload, value.partition, value.offset, reason)
        self.__step.message_out()
        self.__blob_metrics.decompressed_bytes.inc(len(chunk.data))
        return chunk


class BatchPersister:
    """A batch of verified chunks → blobs and owners, in the pipeline's two stages: `store`
    (objects durable on return) and `commit` (rows committed on return)."""

    def __init__(
        self, writer: ChunkWriter, metrics: FleetMetrics, blob_metrics: BlobIngestMetrics
    ) -> None:
        self.__writer = writer
        self.__store_step = metrics.step(STORE_STEP)
        self.__step = metrics.step(PERSIST_STEP)
        self.__blob_metrics = blob_metrics

    def store(self, message: Message[ValuesBatch[VerifiedChunk]]) -> StoredBatch:
        chunks = [value.payload for value in message.payload]
        self.__store_step.message_in(len(chunks))
        with self.__store_step.time():
            stored = self.__writer.store(chunks)
        self.__store_step.message_out(len(chunks))
        return stored

    def commit(self, stored: StoredBatch) -> PersistResult:
        count = len(stored.chunks)
        self.__step.message_in(count)
        self.__step.observe_batch_size(count)
        with self.__step.time():
            result = self.__writer.commit(stored)
        self.__blob_metrics.record(result)
        self.__step.message_out(count)
        return result

    def discard(self, stored: StoredBatch) -> None:
        self.__writer.discard(stored)


def validate_in_pool(message: Message[KafkaPayload]) -> bool:
    return len(message.payload.value) >= POOL_MIN_VALUE_BYTES


def value_bytes(message: Message[KafkaPayload]) -> int:
    return len(message.payload.value)


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
        decode_threads: int = DEFAULT_DECODE_THREADS,
        batches_in_flight: int = DEFAULT_BATCHES_IN_FLIGHT,
        on_shutdown: Callable[[], None] = lambda: None,
    ) -> None:
        self.__validator = validator
        self.__persister = persister
        self.__max_batch_size = max_batch_size
        self.__max_batch_time_seconds = max_batch_time_seconds
        self.__weight = batch_weight(max_batch_size, max_batch_bytes)
        self.__decode_threads = decode_threads
        self.__batches_in_flight = batches_in_flight
        self.__on_shutdown = on_shutdown

    def create_with_partitions(
        self, commit: Commit, partitions: Mapping[Partition, int]
    ) -> ProcessingStrategy[KafkaPayload]:
        persister = self.__persister
        return RunTaskInPool(
            self.__validator,
            OrderedBatchStep(
                self.__max_batch_size,
                self.__max_batch_time_seconds,
                TwoStagePipeline(
                    persister.store,
                    persister.commit,
                    CommitOffsets(commit),
                    max_in_flight=self.__batches_in_flight,
                    abandon=persister.discard,
                    # One batch commits while the others are stored.
                    first_threads=max(1, self.__batches_in_flight - 1),
                ),
                compute_batch_size=self.__weight,
            ),
            threads=self.__decode_threads,
            max_pending=MAX_PENDING_DECODES,
            max_pending_bytes=MAX_PENDING_DECODE_BYTES,
            in_pool=validate_in_pool,
            weigh=value_bytes,
        )

    def shutdown(self) -> None:
        self.__on_shutdown()

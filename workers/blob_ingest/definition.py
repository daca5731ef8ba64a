"""The blob-ingest worker's registry entry: `workers run blob-ingest`.

Worker options (after the shared ones):
- `--max-batch-bytes N` (default 64 MiB): a batch is also full at about this many bytes;
- `--decode-threads N` (default 2): threads that decompress and hash chunks of 64 KiB and more;
- `--batches-in-flight N` (default 3): batches being stored or committed at once (one commits
  while the others are stored; each holds up to `--max-batch-bytes`);
- `--database-outage-seconds S` (default 60): how long database work (a batch's lookup and
  transaction, an organization check) is retried while PostgreSQL is unreachable before the
  worker exits;
- `--storage-url URL`: overrides `BLOB_STORAGE_URL` for this worker.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Final

import click
from confluent_kafka import Producer

from workers.blob_ingest.metrics import BlobIngestMetrics
from workers.blob_ingest.organizations import KnownOrganizations
from workers.blob_ingest.persist import BlobWriter
from workers.blob_ingest.strategy import (
    DEFAULT_BATCHES_IN_FLIGHT,
    DEFAULT_DECODE_THREADS,
    BatchPersister,
    BlobIngestStrategyFactory,
    ChunkValidator,
)
from workers.common.chunk_uploads import CHUNK_UPLOADS_TOPIC
from workers.common.database import create_pool
from workers.common.database_outage import DEFAULT_DATABASE_OUTAGE_SECONDS, DatabaseOutage
from workers.common.kafka_config import producer_configuration
from workers.common.registry import ConsumerDefinition, StrategyContext
from workers.common.run_dead_letters import RunDeadLetters
from workers.common.snowflake import (
    LeasedSnowflakeGenerator,
    WorkerIdLeases,
    lease_redis_client,
)
from workers.common.storage import open_blob_storage
from workers.common.strategies.unroll_runs import UnrolledRuns

INPUT_TOPIC: Final = CHUNK_UPLOADS_TOPIC
DLQ_TOPIC: Final = "chunk-uploads-dlq"
CONSUMER_GROUP: Final = "blob-ingest"
BLOB_ID_NAMESPACE: Final = "blobs"
DEFAULT_MAX_BATCH_BYTES: Final = 64 * 1024 * 1024

CLICK_OPTIONS: Final = (
    click.Option(
        ["--max-batch-bytes"],
        type=click.IntRange(min=1024 * 1024),
        default=DEFAULT_MAX_BATCH_BYTES,
        show_default=True,
        help="A batch is also full at about this many decompressed bytes.",
    ),
    click.Option(
        ["--decode-threads"],
        type=click.IntRange(min=1, max=64),
        default=DEFAULT_DECODE_THREADS,
        show_default=True,
        help="Threads that decompress and hash chunks of 64 KiB and more.",
    ),
    click.Option(
        ["--batches-in-flight"],
        type=click.IntRange(min=1, max=8),
        default=DEFAULT_BATCHES_IN_FLIGHT,
        show_default=True,
        help="Batches being stored or committed at once (the next waits).",
    ),
    click.Option(
        ["--database-outage-seconds"],
        type=click.FloatRange(min=0),
        default=DEFAULT_DATABASE_OUTAGE_SECONDS,
        show_default=True,
        help="How long database work is retried while PostgreSQL is unreachable before the "
        "worker exits.",
    ),
    click.Option(["--storage-url"], help="Blob storage URL (default: BLOB_STORAGE_URL)."),
)


def build_strategy_factory(context: StrategyContext) -> UnrolledRuns:
    """The chain, fed in runs (`UnrolledRuns`): Arroyo's per-message cost bounded the 4 KiB
    rate (docs/blob-ingest.md, Chain)."""
    dlq_topic = context.dlq_topic
    producer = (
        None
        if dlq_topic is None
        else Producer(producer_configuration(context.settings, client_id=f"{context.worker}-dlq"))
    )
    dead_letters = RunDeadLetters(
        producer, dlq_topic, context.worker, context.metrics, context.dlq_limiter
    )
    return UnrolledRuns(build_chunk_strategy_factory(context), dead_letters)


def build_chunk_strategy_factory(context: StrategyContext) -> BlobIngestStrategyFactory:
    """The per-message chain (`strategy.py`)."""
    settings = context.settings
    resources = contextlib.ExitStack()
    try:
        pool = create_pool(settings, name="blob-ingest")
        resources.callback(pool.close)
        storage = open_blob_storage(settings, context.options.get("storage_url"))
        resources.callback(storage.close)
        # Bounded socket timeouts: a hung Redis must not stall the lease heartbeat.
        redis = lease_redis_client(settings.redis_url)
        resources.callback(redis.close)
        ids = LeasedSnowflakeGenerator(WorkerIdLeases(redis, BLOB_ID_NAMESPACE)).start()
        resources.callback(ids.release)
    except BaseException:
        resources.close()
        raise
    blob_metrics = BlobIngestMetrics(context.metrics.registry, context.worker)
    # Ends the database retries of a batch in flight when the worker stops.
    stopping = threading.Event()
    outage = DatabaseOutage(
        float(context.options.get("database_outage_seconds", DEFAULT_DATABASE_OUTAGE_SECONDS)),
        stopping=stopping,
    )

    def shut_down() -> None:
        stopping.set()
        resources.close()

    return BlobIngestStrategyFactory(
        validator=ChunkValidator(
            KnownOrganizations(pool, outage=outage).exists, context.metrics, blob_metrics
        ),
        persister=BatchPersister(
            BlobWriter(pool, storage, ids.generate, outage),
            context.metrics,
            blob_metrics,
        ),
        max_batch_size=context.max_batch_size,
        max_batch_time_seconds=context.max_batch_time_seconds,
        max_batch_bytes=int(context.options.get("max_batch_bytes") or DEFAULT_MAX_BATCH_BYTES),
        decode_threads=int(context.options.get("decode_threads") or DEFAULT_DECODE_THREADS),
        batches_in_flight=int(
            context.options.get("batches_in_flight") or DEFAULT_BATCHES_IN_FLIGHT
        ),
        on_shutdown=shut_down,
    )


BLOB_INGEST_CONSUMER: Final = ConsumerDefinition(
    name="blob-ingest",
    description="Chunk-upload events → deduplicated, durable blobs with snowflake ids.",
    topic=INPUT_TOPIC,
    build_strategy_factory=build_strategy_factory,
    dlq_topic=DLQ_TOPIC,
    default_consumer_group=CONSUMER_GROUP,
    max_batch_size=1000,
    max_batch_time_ms=200,
    click_options=CLICK_OPTIONS,
    consumes_runs=True,
)

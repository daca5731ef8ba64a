"""The per-process resources of the gateway, opened together and closed together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

from confluent_kafka import Producer
from psycopg_pool import AsyncConnectionPool
from redis.asyncio import Redis

from workers.common.assemble_requests import ASSEMBLE_REQUESTS_TOPIC
from workers.common.chunk_uploads import CHUNK_UPLOADS_TOPIC
from workers.common.kafka_config import producer_configuration
from workers.common.settings import Settings
from workers.gateway.assemble import DEFAULT_MAX_ASSEMBLE_BYTES, Assembler
from workers.gateway.assemble_status import AssembleStatusCache
from workers.gateway.assemble_store import PostgresAssembleStore
from workers.gateway.metrics import GatewayMetrics
from workers.gateway.options import COMPRESSION, UploadLimits, UploadUrls
from workers.gateway.pacing import BodyPace
from workers.gateway.pending import DEFAULT_TTL_SECONDS, PendingChunks
from workers.gateway.publisher import AcknowledgedProducer, AssembleRequestPublisher, ChunkPublisher
from workers.gateway.upload_slots import DEFAULT_MAX_WAIT_SECONDS, UploadSlots

DEFAULT_PRODUCE_TIMEOUT_SECONDS: Final = 30.0
POOL_OPEN_TIMEOUT_SECONDS: Final = 30.0
DEFAULT_MAX_CONCURRENT_UPLOADS: Final = 8
#: Assemble requests answered at once (each holds at most about 100 MiB at its peak: a
#: maximal body with its checksums, never file bytes).
DEFAULT_MAX_CONCURRENT_ASSEMBLES: Final = 4


@dataclass(frozen=True)
class GatewayConfig:
    public_url: str | None = None
    #: Sentry's upload-url prefix: the upload `url` of every client when set.
    upload_url_prefix: str | None = None
    #: Codecs advertised in the upload options (a subset of `COMPRESSION`).
    upload_compression: tuple[str, ...] = COMPRESSION
    topic: str = CHUNK_UPLOADS_TOPIC
    #: Where the files to assemble go (the assemble worker's input).
    assemble_topic: str = ASSEMBLE_REQUESTS_TOPIC
    limits: UploadLimits = field(default_factory=UploadLimits)
    produce_timeout_seconds: float = DEFAULT_PRODUCE_TIMEOUT_SECONDS
    pending_ttl_seconds: int = DEFAULT_TTL_SECONDS
    #: Upload requests buffering chunks at once (each holds up to about 33 MiB).
    max_concurrent_uploads: int = DEFAULT_MAX_CONCURRENT_UPLOADS
    #: Of those, what one organization may hold (None: half, at least one).
    max_uploads_per_organization: int | None = None
    #: How long a request waits for an upload slot before a 503 with `Retry-After`.
    upload_slot_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS
    body_pace: BodyPace = field(default_factory=BodyPace)
    #: Assemble requests answered at once, shared between organizations like upload slots
    #: (docs/gateway.md, Bounded assemble).
    max_concurrent_assembles: int = DEFAULT_MAX_CONCURRENT_ASSEMBLES
    #: Of those, what one organization may hold (None: half, at least one).
    max_assembles_per_organization: int | None = None
    #: How long an assemble request waits for its turn before a 503 with `Retry-After`.
    assemble_slot_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS
    #: Bytes of chunks one assemble request may enqueue (docs/gateway.md, Bounded assemble).
    max_assemble_bytes: int = DEFAULT_MAX_ASSEMBLE_BYTES

    @property
    def upload_urls(self) -> UploadUrls:
        return UploadUrls(self.public_url, self.upload_url_prefix)


@dataclass(frozen=True)
class GatewayServices:
    config: GatewayConfig
    pool: AsyncConnectionPool
    redis: Redis
    #: Chunks → `chunk-uploads` (the assembler has the `assemble-requests` side).
    publisher: ChunkPublisher
    pending: PendingChunks
    assembler: Assembler
    metrics: GatewayMetrics
    upload_slots: UploadSlots
    #: Assemble requests in progress (the same fair, bounded slots as uploads).
    assemble_slots: UploadSlots


def gateway_producer(settings: Settings, config: GatewayConfig) -> Producer:
    # librdkafka gives up on a message a little before the request stops waiting for it.
    timeout_ms = max(int(config.produce_timeout_seconds * 1000) - 500, 1000)
    return Producer(
        producer_configuration(
            settings,
            client_id="workers-gateway",
            # sentry-cli sends gzip chunks: lz4 on top of gzip costs CPU and saves nothing.
            overrides={
                "message.timeout.ms": timeout_ms,
                "linger.ms": 2,
                "compression.type": "none",
            },
        )
    )


@asynccontextmanager
async def open_services(
    settings: Settings, config: GatewayConfig, metrics: GatewayMetrics
) -> AsyncIterator[GatewayServices]:
    """Everything opened here is closed again, also when a later step fails to open."""
    async with AsyncExitStack() as stack:
        pool = AsyncConnectionPool(
            settings.database_url,
            min_size=1,
            max_size=settings.database_pool_max_size,
            name="gateway",
            open=False,
            kwargs={"application_name": "gateway", "autocommit": True},
        )
        await pool.open(wait=True, timeout=POOL_OPEN_TIMEOUT_SECONDS)
        stack.push_async_callback(pool.close)
        redis: Redis = Redis.from_url(settings.redis_url)
        stack.push_async_callback(redis.aclose)
        producer = AcknowledgedProducer(
            gateway_producer(settings, config), config.produce_timeout_seconds
        )
        stack.callback(producer.close)
        pending = PendingChunks(redis, config.pending_ttl_seconds)
        upload_slots = UploadSlots(
            config.max_concurrent_uploads,
            config.max_uploads_per_organization,
            config.upload_slot_wait_seconds,
        )
        assemble_slots = UploadSlots(
            config.max_concurrent_assembles,
            config.max_assembles_per_organization,
            config.assemble_slot_wait_seconds,
        )
        metrics.watch_slots("upload", upload_slots)
        metrics.watch_slots("assemble", assemble_slots)
        yield GatewayServices(
            config=config,
            pool=pool,
            redis=redis,
            publisher=ChunkPublisher(producer, config.topic),
            pending=pending,
            assembler=Assembler(
                PostgresAssembleStore(pool),
                AssembleStatusCache(redis),
                pending,
                AssembleRequestPublisher(producer, config.assemble_topic),
                config.max_assemble_bytes,
            ),
            metrics=metrics,
            upload_slots=upload_slots,
            assemble_slots=assemble_slots,
        )

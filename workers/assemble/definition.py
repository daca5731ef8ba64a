"""The assemble worker's registry entry: `workers run assemble` (docs/assemble.md).

Worker options (after the shared ones):
- `--storage-url URL`: overrides `BLOB_STORAGE_URL` for this worker;
- `--max-assemble-bytes N` (default 8 GiB, as the gateway's bound): larger files end in
  `error` (`File exceeds maximum size`), unread;
- `--temp-dir DIR` (default the system's temporary directory): where a debug file being
  assembled is written (at most one per process, removed once recorded; artifact bundles
  are read through their stored chunks, never written);
- `--max-attempts N` (default 5): a task started this many times (each start a worker that
  died mid-file) ends in `error` instead of being started again.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Final

import click
from redis import Redis

from workers.assemble.chunks import DEFAULT_MAX_ASSEMBLE_BYTES, ChunkAssembler, ChunkLocator
from workers.assemble.file_assembly import DEFAULT_MAX_ATTEMPTS, FileAssembly
from workers.assemble.inspect_file import FileInspector
from workers.assemble.metrics import AssembleMetrics
from workers.assemble.record import TaskRecorder
from workers.assemble.scratch import ScratchDirectory
from workers.assemble.status_cache import StatusCache
from workers.assemble.strategy import AssembleStrategyFactory, RequestDecoder
from workers.assemble.tasks import TaskStore
from workers.common.assemble_requests import ASSEMBLE_REQUESTS_TOPIC
from workers.common.database import create_pool
from workers.common.registry import ConsumerDefinition, StrategyContext
from workers.common.storage import open_blob_storage

INPUT_TOPIC: Final = ASSEMBLE_REQUESTS_TOPIC
DLQ_TOPIC: Final = "assemble-requests-dlq"
CONSUMER_GROUP: Final = "assemble"
REDIS_TIMEOUT_SECONDS: Final = 5.0

CLICK_OPTIONS: Final = (
    click.Option(["--storage-url"], help="Blob storage URL (default: BLOB_STORAGE_URL)."),
    click.Option(
        ["--max-assemble-bytes"],
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_ASSEMBLE_BYTES,
        show_default=True,
        help="Largest file assembled; larger ones end in error, unread.",
    ),
    click.Option(
        ["--temp-dir"],
        type=click.Path(file_okay=False, exists=True, writable=True, path_type=Path),
        help="Directory of a debug file being assembled (default: the system's temp dir).",
    ),
    click.Option(
        ["--max-attempts"],
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_ATTEMPTS,
        show_default=True,
        help="Starts of one task (workers that died mid-file) before it ends in error.",
    ),
)


def build_strategy_factory(context: StrategyContext) -> AssembleStrategyFactory:
    settings, options = context.settings, context.options
    scratch = ScratchDirectory(Path(options.get("temp_dir") or tempfile.gettempdir()))
    scratch.remove_leftovers()
    assemble_metrics = AssembleMetrics(context.metrics.registry, context.worker)
    resources = contextlib.ExitStack()
    try:
        pool = create_pool(settings, name="assemble")
        resources.callback(pool.close)
        storage = open_blob_storage(settings, options.get("storage_url"))
        resources.callback(storage.close)
        redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=REDIS_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        )
        resources.callback(redis.close)
    except BaseException:
        resources.close()
        raise
    read = ChunkAssembler(
        ChunkLocator(pool),
        storage,
        scratch,
        int(options.get("max_assemble_bytes") or DEFAULT_MAX_ASSEMBLE_BYTES),
        on_read=assemble_metrics.read_bytes.inc,
    )
    assembly = FileAssembly(
        claim=TaskStore(pool).claim,
        read=read,
        inspect=FileInspector(storage.get),
        recorder=TaskRecorder(pool),
        status=StatusCache(redis),
        metrics=context.metrics,
        assemble_metrics=assemble_metrics,
        max_attempts=int(options.get("max_attempts") or DEFAULT_MAX_ATTEMPTS),
    )
    return AssembleStrategyFactory(
        RequestDecoder(context.metrics), assembly, on_shutdown=resources.close
    )


ASSEMBLE_CONSUMER: Final = ConsumerDefinition(
    name="assemble",
    description="Assemble requests → files assembled from their chunks, checked and indexed.",
    topic=INPUT_TOPIC,
    build_strategy_factory=build_strategy_factory,
    dlq_topic=DLQ_TOPIC,
    default_consumer_group=CONSUMER_GROUP,
    max_batch_size=1,
    max_batch_time_ms=1000,
    click_options=CLICK_OPTIONS,
)

"""Blob ingest end to end: real Kafka, real storage (filesystem, fsync on), real PostgreSQL.

Two writers through the *same* Arroyo chain, side by side in one run, at 4 KiB and 1 MiB
chunks:

- `batched`: the worker's set-based `BlobWriter` (a handful of round trips per batch);
- `per-chunk`: `bench._blob_reference.PerChunkBlobWriter`, which behaves like Sentry's
  (docs/reference.md, Blob store): per chunk one lookup by checksum, one storage write, one
  blob INSERT, one owner INSERT and one COMMIT, each chunk in its own transaction.

Each run is `BlobIngestStrategyFactory` (`ChunkValidator` → `BatchStep` → `BatchPersister`
around the chosen writer → `CommitOffsets`) wired as `workers.blob_ingest.definition` wires it
(pool from `create_pool`, storage from `open_blob_storage`, ids from a leased snowflake
generator, the worker's default batch limits, fed in runs by `UnrolledRuns`), driven by an
in-process `StreamProcessor` on the worker's `RunConsumer` built from `consumer_configuration`.
Every mode/size gets its own fresh topic and consumer group. All events are produced before any
timing starts (confluent `Producer`, `message.max.bytes` 16 MiB): the same generator,
organization, sizes and headers for both modes, with random bytes per chunk so that nothing
deduplicates, not even against the other mode's run (the checksum is globally unique, so
identical events would turn the second run into owner-only inserts). The clock runs from the
first message the validator sees to the return of the batch that brings the persisted count to
the target; then the processor is told to stop (as in `bench.consumer_throughput`). Each topic
holds one batch's worth of padding events after the counted ones: Arroyo polls with a 1 s
timeout and checks the batch time only between polls, so a last partial batch on an input that
has gone idle would wait up to ~1 s, which would be measured as ingest time (a third of a 3 s
run); with padding the batch holding the target-th chunk closes full, as in a steady stream.
The rate is the chunks persisted by then (the target, rounded up to that batch) over the
elapsed time; batches that reach the persister after the target (the padding, flushed when the
processor shuts down) are passed on without being persisted. Before each run the page cache is
flushed (`os.sync()`), so the producer's Kafka writes are not written back inside a timed
window; the storage dirs are all removed at the end, so no run pays for the previous one's
deletes.

Peak RSS: each run happens in a fresh interpreter started with `multiprocessing`'s *spawn*
method and reports `VmHWM` from `/proc/self/status`: the high-water mark of that process's
own address space since its `exec` (interpreter, imports, librdkafka's prefetch queue, the
batches), so one run's peak never includes another's. `getrusage(RUSAGE_SELF).ru_maxrss` is
*not* usable here: in a one-process bench it is the maximum over all earlier runs, and in a
spawned child Linux carries the pre-`exec` memory's high-water mark over into it, which is
the parent's RSS (measured: a child spawned by a 515 MiB parent reports ru_maxrss 515 MiB
and VmHWM 16 MiB). A *fork* child would start with the parent's pages and librdkafka threads.
The child also reports its RSS just before consuming starts, so the peak can be read against
that baseline. MB/s are 10**6 bytes of chunk data per second; RSS is in MiB.

Storage goes to a fresh directory under `--scratch-dir` (default /tmp, the disk). Pointing it
at a tmpfs (`--scratch-dir /dev/shm`, where fsync costs nothing) shows what the chain costs
without the disk: Kafka, validation, PostgreSQL and Python.

The disk ceiling (`--disk-ceiling-files`, default 5,000) is measured in the same run: 4 KiB
files created, written and fsynced by the backend's pool size of threads and nothing else, so
the batched 4 KiB rate can be read against what this disk allows at all. It is measured right
before and right after the batched 4 KiB run; the ceiling is the mean of the two rates (both
are printed). It used to be measured once, after every run, a minute or more after the run it
is compared with: on this shared VM the disk's rate moves by 2x and more within minutes
(1,540 to 5,551 files/s in one half hour), so that compared the run with a different disk.
The ceiling's files are removed with the storage dirs at the end, not right away: ext4 checks
the inodes of files deleted in the last minute again on every file it creates, so deleting
5,000 files made the batched run that followed pay several times the CPU per file.
Around the batched 1 MiB run the disk's own 1 MiB ratio is measured the same way
(`--disk-ceiling-files-1m`, `bench/disk_ceiling.py`): files batched as the worker batches
against files written and synced one at a time.

Prints a table, writes a bar chart (`bench/results/blob_ingest.png`, prints its path) and,
as the last line, one JSON object with the figures. Afterwards the temporary storage dirs,
the topics and the rows and organization the bench created are removed (`--keep-rows` keeps
the rows; `--keep-files` keeps the files, for runs back to back: ext4 makes new files dearer
for one to six minutes after many were deleted, so a run right after another that deleted
its 30,000 files pays for them). `--profile DIR` runs every child under cProfile, prints
where the time goes and keeps the `.prof` files in DIR (outside the repository, e.g. /tmp).
Usage: `python -m bench.blob_ingest [--chunks-4k N] [--per-chunk-4k N] [--chunks-1m N]
[--per-chunk-1m N] [--profile DIR]` (needs `workers stack up` and `workers migrate`).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import io
import multiprocessing
import os
import pstats
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import psycopg
from arroyo.backends.kafka import KafkaPayload
from arroyo.commit import CommitPolicy
from arroyo.processing import StreamProcessor
from arroyo.processing.strategies.batching import ValuesBatch
from arroyo.types import Message, Topic
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AdminClient
from prometheus_client import CollectorRegistry

from bench import report
from bench._blob_reference import PerChunkBlobWriter
from bench.disk_ceiling import (
    CEILING_DESCRIPTIONS,
    DiskCeiling,
    measure_disk_ceiling,
    measure_large_file_ratio,
    pooled_ceiling,
    pooled_ratio,
)
from harness.kafka import unique_name
from workers.blob_ingest.decode import VerifiedChunk
from workers.blob_ingest.definition import (
    BLOB_ID_NAMESPACE,
    BLOB_INGEST_CONSUMER,
    DEFAULT_MAX_BATCH_BYTES,
)
from workers.blob_ingest.metrics import BlobIngestMetrics
from workers.blob_ingest.organizations import KnownOrganizations
from workers.blob_ingest.persist import BlobWriter, ChunkWriter, PersistResult, StoredBatch
from workers.blob_ingest.strategy import (
    DEFAULT_BATCHES_IN_FLIGHT,
    DEFAULT_DECODE_THREADS,
    BatchPersister,
    BlobIngestStrategyFactory,
    ChunkValidator,
)
from workers.common.chunk_uploads import encode_headers
from workers.common.database import create_pool
from workers.common.kafka_config import (
    DEFAULT_COMMIT_INTERVAL_MS,
    MAX_MESSAGE_BYTES,
    ConsumerOptions,
    admin_configuration,
    consumer_configuration,
)
from workers.common.message_runs import MessageRun, RunConsumer
from workers.common.metrics import FleetMetrics
from workers.common.projects import create_organization
from workers.common.run_dead_letters import RunDeadLetters
from workers.common.settings import Settings
from workers.common.snowflake import LeasedSnowflakeGenerator, WorkerIdLeases, lease_redis_client
from workers.common.storage import BlobStorage, StoredObject, open_blob_storage
from workers.common.storage.filesystem_sync import (
    SYNC_METHODS,
    SyncMethod,
    choose_sync_method,
    parse_sync_setting,
)
from workers.common.strategies.unroll_runs import UnrolledRuns
from workers.common.topics import DEFAULT_TOPIC_CONFIG, TopicSpec, create_topics

Mode = Literal["batched", "per-chunk"]
MODES: Final[tuple[Mode, ...]] = ("batched", "per-chunk")
KIB: Final = 1024
MIB: Final = 1024 * 1024
PARTITIONS: Final = 4
WORKER: Final = "blob-ingest"
TARGET_RATIO_4K: Final = 10.0
TARGET_RATIO_1M: Final = 3.0
TARGET_CEILING_SHARE: Final = 0.9
TARGET_CHUNKS_PER_S_4K: Final = 5_000.0
RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
DEFAULT_CHART: Final = RESULTS_DIR / "blob_ingest.png"


def size_label(size: int) -> str:
    return f"{size // MIB} MiB" if size % MIB == 0 else f"{size // KIB} KiB"


# -- one run (in a spawned child) ---------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    mode: Mode
    chunk_size: int
    chunks: int
    # Events in the topic after the counted ones (see the module docstring).
    padding: int
    topic: str
    organization_id: int
    storage_root: str
    max_batch_size: int
    max_batch_time_ms: int
    max_batch_bytes: int
    decode_threads: int
    batches_in_flight: int
    timeout_seconds: float
    profile_path: str | None = None


@dataclass(frozen=True)
class RunResult:
    spec: RunSpec
    persisted: int
    new_blobs: int
    batches: int
    seconds: float
    validate_seconds: float
    store_seconds: float
    persist_seconds: float
    storage_seconds: float
    start_rss_bytes: int
    #: CPU seconds (user, system) of the consuming process while `processor.run()` ran.
    cpu_seconds: tuple[float, float]
    peak_rss_bytes: int
    profile_top: str | None = None

    @property
    def chunks_per_second(self) -> float:
        return self.persisted / self.seconds

    @property
    def mb_per_second(self) -> float:
        return self.persisted * self.spec.chunk_size / self.seconds / 1e6


@dataclass
class RunClock:
    """Shared by the validator and the persister of one run: when it started, how far it is."""

    target: int
    on_done: Callable[[], None]
    first_seen: float | None = None
    finished: float | None = None
    persisted: int = 0
    batches: int = 0
    validate_seconds: float = 0.0
    store_seconds: float = 0.0
    persist_seconds: float = 0.0
    dropped: int = 0


class TimedValidator(ChunkValidator):
    """The worker's validator, noting the first message seen and its own time (it runs on the
    consumer thread and in the decode pool)."""

    def __init__(
        self,
        clock: RunClock,
        organization_exists: Callable[[int], bool],
        metrics: FleetMetrics,
        blob_metrics: BlobIngestMetrics,
    ) -> None:
        super().__init__(organization_exists, metrics, blob_metrics)
        self._clock = clock
        self._lock = threading.Lock()

    def __call__(self, message: Message[KafkaPayload]) -> VerifiedChunk:
        started = time.perf_counter()
        with self._lock:
            if self._clock.first_seen is None:
                self._clock.first_seen = started
        try:
            return super().__call__(message)
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self._clock.validate_seconds += elapsed


class CountingPersister(BatchPersister):
    """The worker's persister; stops the processor once `target` chunks are persisted (their
    transaction committed) and drops (passes on unstored and uncommitted) whatever comes
    after. Both stages run in the pipeline's threads, one batch at a time each."""

    def __init__(
        self,
        clock: RunClock,
        writer: ChunkWriter,
        metrics: FleetMetrics,
        blob_metrics: BlobIngestMetrics,
    ) -> None:
        super().__init__(writer, metrics, blob_metrics)
        self._clock = clock

    def store(self, message: Message[ValuesBatch[VerifiedChunk]]) -> StoredBatch:
        if self._clock.finished is not None:  # padding after the target: not part of the run
            return StoredBatch.unstored([value.payload for value in message.payload])
        started = time.perf_counter()
        stored = super().store(message)
        self._clock.store_seconds += time.perf_counter() - started
        return stored

    def commit(self, stored: StoredBatch) -> PersistResult:
        clock = self._clock
        if clock.finished is not None:
            # Stored while the target's batch was committing, or not at all: not part of it.
            clock.dropped += len(stored.chunks)
            self.discard(stored)
            return PersistResult(len(stored.chunks), 0, 0, 0, 0, 0, 0)
        started = time.perf_counter()
        result = super().commit(stored)
        now = time.perf_counter()
        clock.persist_seconds += now - started
        clock.persisted += len(stored.chunks)
        clock.batches += 1
        if clock.persisted >= clock.target and clock.finished is None:
            clock.finished = now
            clock.on_done()
        return result


class TimedStorage(BlobStorage):
    """Delegates to the real storage and sums the seconds spent writing (fsyncs included).

    The public methods (inherited) validate paths and check the storage is open; the
    delegation goes straight to the backend's `_do_*` methods so nothing is done twice.
    """

    def __init__(self, inner: BlobStorage) -> None:
        super().__init__()
        self._inner = inner
        self.put_seconds = 0.0

    def _do_put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        started = time.perf_counter()
        try:
            self._inner._do_put_many(items)
        finally:
            self.put_seconds += time.perf_counter() - started

    def _do_put_new_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        started = time.perf_counter()
        try:
            self._inner._do_put_new_many(items)
        finally:
            self.put_seconds += time.perf_counter() - started

    def _do_get(self, path: str) -> bytes:
        return self._inner._do_get(path)

    def _do_exists(self, path: str) -> bool:
        return self._inner._do_exists(path)

    def _do_delete_many(self, paths: Sequence[str]) -> None:
        self._inner._do_delete_many(paths)

    def _do_iter_objects(self, prefix: str) -> Iterator[StoredObject]:
        return self._inner._do_iter_objects(prefix)

    def _do_check(self) -> None:
        self._inner._do_check()

    def _do_close(self) -> None:
        self._inner.close()


def _cpu_seconds() -> tuple[float, float]:
    """(user, system) CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _rss_bytes(field_name: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) * KIB
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def measure(spec: RunSpec) -> RunResult:
    """One mode at one chunk size, in this (fresh, spawned) process."""
    settings = Settings.from_env()
    with contextlib.ExitStack() as resources:
        pool = create_pool(settings, name="bench-blob-ingest")
        resources.callback(pool.close)
        storage = TimedStorage(open_blob_storage(settings, Path(spec.storage_root).as_uri()))
        resources.callback(storage.close)
        redis = lease_redis_client(settings.redis_url)
        resources.callback(redis.close)
        ids = LeasedSnowflakeGenerator(WorkerIdLeases(redis, BLOB_ID_NAMESPACE)).start()
        resources.callback(ids.release)

        registry = CollectorRegistry()
        metrics = FleetMetrics(registry, WORKER)
        blob_metrics = BlobIngestMetrics(registry, WORKER)
        writer: ChunkWriter = (
            BlobWriter(pool, storage, ids.generate)
            if spec.mode == "batched"
            else PerChunkBlobWriter(pool, storage, ids.generate)
        )
        holder: list[StreamProcessor[MessageRun]] = []
        clock = RunClock(spec.chunks, lambda: holder[0].signal_shutdown())
        factory = BlobIngestStrategyFactory(
            validator=TimedValidator(clock, KnownOrganizations(pool).exists, metrics, blob_metrics),
            persister=CountingPersister(clock, writer, metrics, blob_metrics),
            max_batch_size=spec.max_batch_size,
            max_batch_time_seconds=spec.max_batch_time_ms / 1000,
            max_batch_bytes=spec.max_batch_bytes,
            decode_threads=spec.decode_threads,
            batches_in_flight=spec.batches_in_flight,
        )
        group = unique_name(f"bench-blob-{spec.mode}-{spec.chunk_size}")
        consumer = RunConsumer(consumer_configuration(settings, ConsumerOptions(group)))
        processor = StreamProcessor(
            consumer,
            Topic(spec.topic),
            # Every event is valid: no DLQ topic.
            UnrolledRuns(factory, RunDeadLetters(None, None, WORKER, metrics)),
            commit_policy=CommitPolicy(DEFAULT_COMMIT_INTERVAL_MS / 1000, None),
        )
        holder.append(processor)
        watchdog = threading.Timer(spec.timeout_seconds, processor.signal_shutdown)
        watchdog.daemon = True
        watchdog.start()
        resources.callback(watchdog.cancel)

        start_rss = _rss_bytes("VmRSS")
        cpu_before = _cpu_seconds()
        profiler = cProfile.Profile() if spec.profile_path else None
        if profiler is not None:
            profiler.enable()
        processor.run()
        if profiler is not None:
            profiler.disable()
        peak_rss = _rss_bytes("VmHWM")
        cpu_after = _cpu_seconds()
        cpu_seconds = (cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1])

    if clock.first_seen is None or clock.finished is None:
        raise RuntimeError(
            f"{spec.mode} {size_label(spec.chunk_size)}: persisted {clock.persisted} of "
            f"{spec.chunks} chunks within {spec.timeout_seconds} s"
        )
    profile_top: str | None = None
    if profiler is not None and spec.profile_path:
        profiler.dump_stats(spec.profile_path)
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(18)
        stats.sort_stats("cumulative").print_stats(30)
        profile_top = text.getvalue()
    return RunResult(
        spec=spec,
        persisted=clock.persisted,
        new_blobs=int(
            registry.get_sample_value("workers_blob_created_total", {"worker": WORKER}) or 0
        ),
        batches=clock.batches,
        seconds=clock.finished - clock.first_seen,
        validate_seconds=clock.validate_seconds,
        store_seconds=clock.store_seconds,
        persist_seconds=clock.persist_seconds,
        storage_seconds=storage.put_seconds,
        start_rss_bytes=start_rss,
        cpu_seconds=cpu_seconds,
        peak_rss_bytes=peak_rss,
        profile_top=profile_top,
    )


def padding_for(chunk_size: int, max_batch_size: int, max_batch_bytes: int) -> int:
    """Chunks of `chunk_size` that fill one batch (mirrors `strategy.batch_weight`)."""
    bytes_per_unit = max(1, max_batch_bytes // max_batch_size)
    units = max(1, -(-chunk_size // bytes_per_unit))
    return -(-max_batch_size // units)


def run_in_fresh_process(spec: RunSpec) -> RunResult:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as executor:
        return executor.submit(measure, spec).result()


# -- setup, verification and cleanup (parent) ---------------------------------------------------


def produce(settings: Settings, topic: str, organization_id: int, size: int, count: int) -> None:
    """`count` identity-encoded chunks of `size` random bytes, each unique."""
    producer = Producer(
        {
            **settings.kafka_client_config(),
            "message.max.bytes": MAX_MESSAGE_BYTES,
            "linger.ms": 20,
        }
    )
    failures: list[str] = []

    def delivered(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            failures.append(str(error))

    uploaded_at_ms = int(time.time() * 1000)
    for _ in range(count):
        data = os.urandom(size)
        checksum = hashlib.sha1(data, usedforsecurity=False).hexdigest()
        headers: list[tuple[str, str | bytes | None]] = list(
            encode_headers(organization_id, checksum, "identity", uploaded_at_ms)
        )
        while True:
            try:
                producer.produce(
                    topic,
                    value=data,
                    key=checksum.encode(),
                    headers=headers,
                    on_delivery=delivered,
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    if left or failures:
        raise RuntimeError(f"{topic}: {left} undelivered, failures {failures[:3]}")


def owner_rows(settings: Settings, organization_id: int) -> int:
    with psycopg.connect(settings.database_url) as connection:
        row = connection.execute(
            "SELECT count(*) FROM blob_owners WHERE organization_id = %s", (organization_id,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def stored_objects(root: Path) -> int:
    return sum(
        1
        for _, _, files in os.walk(root)
        for name in files
        if not name.startswith(".")  # temporary files are not objects
    )


def remove_rows(settings: Settings, organization_id: int) -> None:
    """The bench's blobs (owned by its organization only), owners and organization."""
    with psycopg.connect(settings.database_url) as connection, connection.transaction():
        connection.execute(
            "DELETE FROM blobs b USING blob_owners o WHERE o.blob_id = b.id "
            "AND o.organization_id = %s AND NOT EXISTS (SELECT 1 FROM blob_owners x "
            "WHERE x.blob_id = b.id AND x.organization_id <> %s)",
            (organization_id, organization_id),
        )
        connection.execute("DELETE FROM blob_owners WHERE organization_id = %s", (organization_id,))
        connection.execute("DELETE FROM organizations WHERE id = %s", (organization_id,))


def delete_topics(settings: Settings, topics: Sequence[str]) -> None:
    admin = AdminClient(admin_configuration(settings))
    for future in admin.delete_topics(list(topics), operation_timeout=30).values():
        with contextlib.suppress(Exception):
            future.result()


# -- reporting ----------------------------------------------------------------------------------


TABLE_COLUMNS = (
    *("mode", "chunk size", "chunks", "seconds", "chunks/s"),
    *("MB/s", "peak RSS MiB", "batched/per-chunk"),
)


def ratios(results: Sequence[RunResult]) -> dict[int, float]:
    """Batched chunks/s ÷ per-chunk chunks/s, per chunk size."""
    rates = {(r.spec.mode, r.spec.chunk_size): r.chunks_per_second for r in results}
    return {
        size: rates[("batched", size)] / rates[("per-chunk", size)]
        for mode, size in rates
        if mode == "batched" and ("per-chunk", size) in rates
    }


def print_table(results: Sequence[RunResult]) -> None:
    ratio = ratios(results)
    report.print_table(
        TABLE_COLUMNS,
        [
            [
                r.spec.mode,
                size_label(r.spec.chunk_size),
                f"{r.persisted:,}",
                f"{r.seconds:.2f}",
                f"{r.chunks_per_second:,.0f}",
                f"{r.mb_per_second:.1f}",
                f"{r.peak_rss_bytes / MIB:.0f}",
                f"{ratio[r.spec.chunk_size]:.1f}x"
                if r.spec.mode == "batched" and r.spec.chunk_size in ratio
                else "",
            ]
            for r in results
        ],
    )


def write_chart(results: Sequence[RunResult], path: Path) -> None:
    sizes = sorted({r.spec.chunk_size for r in results})
    by_key = {(r.spec.mode, r.spec.chunk_size): r for r in results}
    panels: list[tuple[str, Callable[[RunResult], float], str, bool]] = [
        ("chunks/s (log scale)", lambda r: r.chunks_per_second, "{:,.0f}", True),
        ("MB/s", lambda r: r.mb_per_second, "{:,.1f}", False),
        ("peak RSS (MiB)", lambda r: r.peak_rss_bytes / MIB, "{:,.0f}", False),
    ]
    width = 0.38
    colors = {"batched": "#2b7bba", "per-chunk": "#e0812b"}
    with report.chart(path, len(panels), size=(14, 4.5)) as (figure, axes):
        for axis, (title, value, shown, log) in zip(axes, panels, strict=True):
            for offset, mode in enumerate(MODES):
                xs = [index + (offset - 0.5) * width for index in range(len(sizes))]
                heights = [value(by_key[(mode, s)]) if (mode, s) in by_key else 0.0 for s in sizes]
                bars = axis.bar(xs, heights, width, label=mode, color=colors[mode])
                axis.bar_label(bars, labels=[shown.format(h) for h in heights], fontsize=8)
            if log:
                axis.set_yscale("log")
                axis.axhline(TARGET_CHUNKS_PER_S_4K, color="grey", linestyle="--", linewidth=1)
                axis.text(
                    -0.45,
                    TARGET_CHUNKS_PER_S_4K * 1.08,
                    f"target at 4 KiB: {TARGET_CHUNKS_PER_S_4K:,.0f}/s",
                    fontsize=8,
                    ha="left",
                    va="bottom",
                    color="grey",
                )
                axis.set_ylim(top=TARGET_CHUNKS_PER_S_4K * 3)
            axis.set_xticks(range(len(sizes)), [size_label(s) for s in sizes])
            axis.set_title(title)
            axis.legend(fontsize=8)
        figure.suptitle(
            "blob ingest through Kafka → filesystem storage (fsync) → PostgreSQL, one process"
        )


def figures(
    results: Sequence[RunResult],
    chart: Path,
    sync_method: SyncMethod,
    ceilings: Mapping[SyncMethod, Sequence[DiskCeiling]],
    large_ceilings: Sequence[tuple[DiskCeiling, DiskCeiling]] = (),
) -> dict[str, Any]:
    ratio = ratios(results)
    measured = ceilings.get(sync_method, ())
    ceiling = pooled_ceiling(measured) if measured else None
    by_key = {(r.spec.mode, r.spec.chunk_size): r for r in results}
    batched_4k = by_key.get(("batched", 4 * KIB))
    runs = []
    for r in results:
        runs.append(
            {
                "mode": r.spec.mode,
                "chunk_bytes": r.spec.chunk_size,
                "chunks": r.persisted,
                "batches": r.batches,
                "seconds": round(r.seconds, 3),
                "chunks_per_s": round(r.chunks_per_second, 1),
                "mb_per_s": round(r.mb_per_second, 2),
                "peak_rss_mib": round(r.peak_rss_bytes / MIB, 1),
                "start_rss_mib": round(r.start_rss_bytes / MIB, 1),
                "cpu_user_s": round(r.cpu_seconds[0], 2),
                "cpu_system_s": round(r.cpu_seconds[1], 2),
                "validate_s": round(r.validate_seconds, 3),
                "store_s": round(r.store_seconds, 3),
                "persist_s": round(r.persist_seconds, 3),
                "storage_put_s": round(r.storage_seconds, 3),
            }
        )
    return {
        "runs": runs,
        "ratio_batched_per_chunk": {size_label(s): round(v, 2) for s, v in ratio.items()},
        "targets": {
            "ratio_4KiB_at_least_10": (ratio.get(4 * KIB, 0.0) >= TARGET_RATIO_4K),
            "ratio_1MiB_at_least_3": (ratio.get(MIB, 0.0) >= TARGET_RATIO_1M),
            "batched_4KiB_at_least_0.9_of_disk_ceiling": ceiling is not None
            and batched_4k is not None
            and batched_4k.chunks_per_second >= TARGET_CEILING_SHARE * ceiling.files_per_second,
            "batched_4KiB_at_least_5000_chunks_per_s": batched_4k is not None
            and batched_4k.chunks_per_second >= TARGET_CHUNKS_PER_S_4K,
        },
        "storage_sync": sync_method,
        "disk_ceiling_4KiB_files_per_s": (
            round(ceiling.files_per_second, 1) if ceiling is not None else None
        ),
        "disk_ceiling_4KiB_measurements": [round(c.files_per_second, 1) for c in measured],
        "disk_ceiling_4KiB_by_sync": {
            method: round(pooled_ceiling(values).files_per_second, 1)
            for method, values in ceilings.items()
            if values
        },
        "batched_4KiB_vs_disk_ceiling": (
            round(batched_4k.chunks_per_second / ceiling.files_per_second, 2)
            if ceiling is not None and batched_4k is not None
            else None
        ),
        "disk_ceiling_1MiB_mb_per_s": large_figures(large_ceilings),
        "chart": str(chart),
    }


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--chunks-4k", type=int, default=20_000, help="batched mode, 4 KiB")
    parser.add_argument("--per-chunk-4k", type=int, default=2_000, help="per-chunk mode, 4 KiB")
    parser.add_argument("--chunks-1m", type=int, default=1_500, help="batched mode, 1 MiB")
    parser.add_argument("--per-chunk-1m", type=int, default=500, help="per-chunk mode, 1 MiB")
    parser.add_argument("--max-batch-size", type=int, default=BLOB_INGEST_CONSUMER.max_batch_size)
    parser.add_argument(
        "--max-batch-time-ms", type=int, default=BLOB_INGEST_CONSUMER.max_batch_time_ms
    )
    parser.add_argument("--max-batch-bytes", type=int, default=DEFAULT_MAX_BATCH_BYTES)
    parser.add_argument("--decode-threads", type=int, default=DEFAULT_DECODE_THREADS)
    parser.add_argument("--batches-in-flight", type=int, default=DEFAULT_BATCHES_IN_FLIGHT)
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="give up on a run after this many seconds"
    )
    parser.add_argument(
        "--scratch-dir",
        type=Path,
        default=Path("/tmp"),
        help="where the temporary storage dirs go (a tmpfs removes the disk from the picture)",
    )
    parser.add_argument("--chart", type=Path, default=DEFAULT_CHART)
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="cProfile every run, .prof files into DIR"
    )
    parser.add_argument("--keep-rows", action="store_true", help="keep the rows afterwards")
    parser.add_argument(
        "--keep-files",
        action="store_true",
        help="keep the storage and ceiling files (so the next run does not pay for deleting them)",
    )
    parser.add_argument(
        "--disk-ceiling-files",
        type=int,
        default=5_000,
        help="4 KiB files for the disk-ceiling measurement (0: skip it)",
    )
    parser.add_argument(
        "--disk-ceiling-files-1m",
        type=int,
        default=300,
        help="1 MiB files for the batched 1 MiB disk ceiling, a third as many one at a time "
        "(0: skip it)",
    )
    args = parser.parse_args(argv)
    for name in ("chunks_4k", "per_chunk_4k", "chunks_1m", "per_chunk_1m"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = Settings.from_env()
    plan: list[tuple[Mode, int, int]] = [
        (mode, size, count)
        for size, counts in (
            (4 * KIB, (args.chunks_4k, args.per_chunk_4k)),
            (MIB, (args.chunks_1m, args.per_chunk_1m)),
        )
        for mode, count in zip(MODES, counts, strict=True)
        if count > 0
    ]
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        organization = create_organization(
            connection, f"bench-blob-{uuid.uuid4().hex[:10]}", "blob ingest bench"
        )
    topics = {(mode, size): unique_name(f"bench-blob-{mode}-{size}") for mode, size, _ in plan}
    create_topics(
        settings,
        [TopicSpec(topic, PARTITIONS, DEFAULT_TOPIC_CONFIG) for topic in topics.values()],
    )
    scratch = Path(tempfile.mkdtemp(prefix="bench-blob-ingest-", dir=args.scratch_dir))
    results: list[RunResult] = []
    # The backend's way of syncing decides which ceiling the batched run is held to; the
    # other is measured beside it for comparison.
    sync_method = choose_sync_method(scratch, parse_sync_setting(settings.blob_storage_sync))
    sync_methods: tuple[SyncMethod, ...] = (
        sync_method,
        *(m for m in SYNC_METHODS if m != sync_method),
    )
    ceilings: dict[SyncMethod, list[DiskCeiling]] = {m: [] for m in sync_methods}

    large_ceilings: list[tuple[DiskCeiling, DiskCeiling]] = []

    def measure_large_ceilings() -> None:
        batch = max(1, min(args.max_batch_size, args.max_batch_bytes // MIB))
        large_ceilings.append(
            measure_large_file_ratio(scratch, MIB, args.disk_ceiling_files_1m, sync_method, batch)
        )

    def measure_ceilings() -> None:
        for method in sync_methods:
            ceilings[method].append(
                measure_disk_ceiling(
                    scratch, 4 * KIB, args.disk_ceiling_files, method, args.max_batch_size
                )
            )

    # The ceilings measured right before and right after a run, to be read against it.
    ceilings_beside: dict[tuple[Mode, int], Callable[[], None]] = {}
    if args.disk_ceiling_files:
        ceilings_beside[("batched", 4 * KIB)] = measure_ceilings
    if args.disk_ceiling_files_1m:
        ceilings_beside[("batched", MIB)] = measure_large_ceilings

    try:
        started = time.perf_counter()
        paddings = {
            size: padding_for(size, args.max_batch_size, args.max_batch_bytes)
            for _, size, _ in plan
        }
        for mode, size, count in plan:
            produce(settings, topics[(mode, size)], organization.id, size, count + paddings[size])
        print(
            f"produced {sum(c + paddings[s] for _, s, c in plan):,} events "
            f"(padding included) to {len(plan)} topics "
            f"in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        for mode, size, count in plan:
            root = scratch / f"{mode}-{size}"
            profile = args.profile / f"blob_ingest_{mode}_{size}.prof" if args.profile else None
            if profile is not None:
                profile.parent.mkdir(parents=True, exist_ok=True)
            spec = RunSpec(
                mode=mode,
                chunk_size=size,
                chunks=count,
                padding=paddings[size],
                topic=topics[(mode, size)],
                organization_id=organization.id,
                storage_root=str(root),
                max_batch_size=args.max_batch_size,
                max_batch_time_ms=args.max_batch_time_ms,
                max_batch_bytes=args.max_batch_bytes,
                decode_threads=args.decode_threads,
                batches_in_flight=args.batches_in_flight,
                timeout_seconds=args.timeout,
                profile_path=str(profile) if profile else None,
            )
            owners_before = owner_rows(settings, organization.id)
            measure_beside = ceilings_beside.get((mode, size))
            if measure_beside is not None:
                measure_beside()
            os.sync()
            result = run_in_fresh_process(spec)
            if measure_beside is not None:
                measure_beside()
            owners_added = owner_rows(settings, organization.id) - owners_before
            objects = stored_objects(root)
            persisted = result.persisted
            if not (persisted == result.new_blobs == owners_added == objects >= count):
                raise RuntimeError(
                    f"{mode} {size_label(size)}: expected {count}+ new blobs, got persisted="
                    f"{result.persisted} new_blobs={result.new_blobs} owners={owners_added} "
                    f"objects={objects}"
                )
            print(
                f"{mode:<9} {size_label(size):>7}: {result.chunks_per_second:,.0f} chunks/s "
                f"({result.seconds:.2f} s)",
                file=sys.stderr,
            )
            if result.profile_top:
                print(f"--- profile {mode} {size_label(size)} ({profile}) ---", file=sys.stderr)
                print(result.profile_top, file=sys.stderr)
            results.append(result)
        if args.disk_ceiling_files and not ceilings[sync_method]:
            measure_ceilings()
    finally:
        if args.keep_files:
            print(f"kept the files in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
        delete_topics(settings, list(topics.values()))
        if not args.keep_rows:
            remove_rows(settings, organization.id)

    print_table(results)
    for method in sync_methods:
        if not ceilings[method]:
            continue
        pooled = pooled_ceiling(ceilings[method])
        print(
            f"disk ceiling, {CEILING_DESCRIPTIONS[method]} "
            f"({'the backend here' if method == sync_method else 'for comparison'}): "
            f"{pooled.files_per_second:,.0f} files/s in {args.scratch_dir} ("
            + " and ".join(f"{c.files_per_second:,.0f}" for c in ceilings[method])
            + (" before and after the batched 4 KiB run)" if len(ceilings[method]) == 2 else ")")
        )
    if large_ceilings:
        batched, one_by_one, ratio = pooled_ratio(large_ceilings)
        print(
            f"disk ceiling, 1 MiB files ({sync_method} sync): {batched.mb_per_second:,.0f} MB/s "
            f"batched as the worker batches, {one_by_one.mb_per_second:,.0f} MB/s one at a "
            f"time by one thread: the disk's own ratio {ratio:.1f}x (means of the "
            "measurements before and after the batched 1 MiB run)"
        )
    write_chart(results, args.chart)
    print(f"chart: {args.chart}")
    report.print_figures(figures(results, args.chart, sync_method, ceilings, large_ceilings))


def large_figures(
    measured: Sequence[tuple[DiskCeiling, DiskCeiling]],
) -> dict[str, float] | None:
    if not measured:
        return None
    batched, one_by_one, ratio = pooled_ratio(measured)
    return {
        "batched": round(batched.mb_per_second, 1),
        "one_at_a_time": round(one_by_one.mb_per_second, 1),
        "ratio": round(ratio, 2),
    }


if __name__ == "__main__":
    main()

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
in-process `StreamProcessor` on the worker's `RunConsumer` built from `consumer_configuration`,
its startup heap frozen first as `workers run` freezes it (`freeze_startup_heap`; without it
every full collection walked the imports and clients again: 9 % more user CPU at 4 KiB).
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

`--repeat N` runs everything N times in turns (each mode and size on a topic of its own per
turn, the ceilings measured beside each turn's batched runs). Issue 16's ratio targets are
then judged as `bench.billing` and `bench.gateway` judge theirs: `value` is the ratio of the
medians, `paired` the median of each turn's own ratio, and both must reach the target
(`bench/repeated_ratio.py`). The chart shows each run's median turn. Before anything is
produced the bench checks that the disk has room for what it will write (`bench/disk_space.py`:
the events in the broker's log, the stored chunks and the ceilings' files, plus 2 GB), and
refuses to start otherwise: a full disk stops the broker.

Prints a table, writes a bar chart (`bench/results/blob_ingest.png`, prints its path) and,
as the last line, one JSON object with the figures (per run also its CPU seconds and minor
page faults: fresh pages the kernel had to zero, which is where its system time swings).
Afterwards the temporary storage dirs, the topics and the rows and organization the bench
created are removed (`--keep-rows` keeps the rows; `--keep-files` keeps the files, for runs
back to back: ext4 makes new files dearer for one to six minutes after many were deleted, so
a run right after another that deleted its 30,000 files pays for them). `--profile DIR` runs
every child under cProfile, prints where the time goes and keeps the `.prof` files in DIR
(outside the repository, e.g. /tmp).
Usage: `python -m bench.blob_ingest [--chunks-4k N] [--per-chunk-4k N] [--chunks-1m N]
[--per-chunk-1m N] [--repeat N] [--keep-files] [--profile DIR]` (needs `workers stack up`
and `workers migrate`).
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
import statistics
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
from bench.disk_space import NotEnoughDiskSpace, check_free_space
from bench.repeated_ratio import RepeatedRatio, repeated_ratio
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
from workers.common.heap import freeze_startup_heap
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
    #: Minor page faults of the consuming process while `processor.run()` ran.
    page_faults: int
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


def _page_faults() -> int:
    """Minor page faults of this process so far: each is a fresh page the kernel zeroed."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


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

        freeze_startup_heap()  # as `workers run` does before its processor runs
        start_rss = _rss_bytes("VmRSS")
        cpu_before = _cpu_seconds()
        faults_before = _page_faults()
        profiler = cProfile.Profile() if spec.profile_path else None
        if profiler is not None:
            profiler.enable()
        processor.run()
        if profiler is not None:
            profiler.disable()
        peak_rss = _rss_bytes("VmHWM")
        cpu_after = _cpu_seconds()
        page_faults = _page_faults() - faults_before
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
        page_faults=page_faults,
        peak_rss_bytes=peak_rss,
        profile_top=profile_top,
    )


@dataclass(frozen=True)
class Turn:
    """One repeat: every mode and size once, each on its own topic, with the disk ceilings
    measured beside its batched runs."""

    results: list[RunResult]
    ceilings: dict[SyncMethod, list[DiskCeiling]]
    large_ceilings: list[tuple[DiskCeiling, DiskCeiling]]

    def rate(self, mode: Mode, size: int) -> float | None:
        for result in self.results:
            if (result.spec.mode, result.spec.chunk_size) == (mode, size):
                return result.chunks_per_second
        return None


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


RATIO_TARGETS: Final[tuple[tuple[str, int, float], ...]] = (
    ("ratio_4KiB_at_least_10", 4 * KIB, TARGET_RATIO_4K),
    ("ratio_1MiB_at_least_3", MIB, TARGET_RATIO_1M),
)
SHARE_TARGET: Final = "batched_4KiB_at_least_0.9_of_disk_ceiling"


def turn_ceiling(turn: Turn, sync_method: SyncMethod) -> DiskCeiling | None:
    """The 4 KiB ceiling of one turn: the mean of its measurements before and after."""
    measured = turn.ceilings.get(sync_method, ())
    return pooled_ceiling(measured) if measured else None


def target_ratios(turns: Sequence[Turn], sync_method: SyncMethod) -> dict[str, RepeatedRatio]:
    """Issue 16's targets that are ratios, over the turns: batched over per-chunk at each
    size, and batched 4 KiB over the disk's ceiling measured beside it."""
    found: dict[str, RepeatedRatio] = {}
    for name, size, target in RATIO_TARGETS:
        pairs = [(t.rate("batched", size), t.rate("per-chunk", size)) for t in turns]
        if all(top is not None and bottom is not None for top, bottom in pairs):
            found[name] = repeated_ratio(
                f"batched / per-chunk, {size_label(size)}",
                [top for top, _ in pairs if top is not None],
                [bottom for _, bottom in pairs if bottom is not None],
                target,
            )
    shares = [(t.rate("batched", 4 * KIB), turn_ceiling(t, sync_method)) for t in turns]
    if all(rate is not None and ceiling is not None for rate, ceiling in shares):
        found[SHARE_TARGET] = repeated_ratio(
            "batched 4 KiB / disk ceiling",
            [rate for rate, _ in shares if rate is not None],
            [ceiling.files_per_second for _, ceiling in shares if ceiling is not None],
            TARGET_CEILING_SHARE,
        )
    return found


def print_target_ratios(found: Mapping[str, RepeatedRatio], repeats: int) -> None:
    """`value` is the ratio of the medians, `paired` the median of the per-turn ratios
    (with several repeats); both must reach the target."""
    print(
        "\nissue 16's targets that are ratios"
        + (
            f" (value: ratio of the medians of {repeats} turns; paired: median of the turns' own)"
            if repeats > 1
            else ""
        )
    )
    report.print_table(
        ("ratio", "value", "paired", "target", "verdict"),
        [
            [
                r.label,
                f"{r.ratio:.2f}",
                "-" if r.paired is None else f"{r.paired:.2f}",
                "-" if r.target is None else f">= {r.target:.2f}",
                r.verdict,
            ]
            for r in found.values()
        ],
        indent="  ",
    )


def median_runs(turns: Sequence[Turn]) -> list[RunResult]:
    """Per mode and size, the run of median rate (the lower middle one for an even count)."""
    keys = [(r.spec.mode, r.spec.chunk_size) for r in turns[0].results]
    chosen = []
    for key in keys:
        runs = sorted(
            (r for t in turns for r in t.results if (r.spec.mode, r.spec.chunk_size) == key),
            key=lambda r: r.chunks_per_second,
        )
        chosen.append(runs[(len(runs) - 1) // 2])
    return chosen


def print_table(turns: Sequence[Turn]) -> None:
    rows = []
    for number, turn in enumerate(turns, start=1):
        ratio = ratios(turn.results)
        rows += [
            [
                *([str(number)] if len(turns) > 1 else []),
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
            for r in turn.results
        ]
    report.print_table((*(["turn"] if len(turns) > 1 else []), *TABLE_COLUMNS), rows)


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


def run_figures(r: RunResult, turn: int) -> dict[str, Any]:
    return {
        "turn": turn,
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
        "page_faults": r.page_faults,
        "validate_s": round(r.validate_seconds, 3),
        "store_s": round(r.store_seconds, 3),
        "persist_s": round(r.persist_seconds, 3),
        "storage_put_s": round(r.storage_seconds, 3),
    }


def figures(turns: Sequence[Turn], chart: Path, sync_method: SyncMethod) -> dict[str, Any]:
    found = target_ratios(turns, sync_method)
    measured = [c for t in turns for c in t.ceilings.get(sync_method, ())]
    ceiling = pooled_ceiling(measured) if measured else None
    batched_4k = [rate for t in turns if (rate := t.rate("batched", 4 * KIB)) is not None]
    share = found.get(SHARE_TARGET)
    targets = {
        name: name in found and found[name].verdict == "ok"
        for name, _, _ in (*RATIO_TARGETS, (SHARE_TARGET, 0, 0.0))
    }
    targets["batched_4KiB_at_least_5000_chunks_per_s"] = bool(batched_4k) and (
        statistics.median(batched_4k) >= TARGET_CHUNKS_PER_S_4K
    )
    return {
        "turns": len(turns),
        "runs": [run_figures(r, n) for n, t in enumerate(turns, start=1) for r in t.results],
        "ratio_batched_per_chunk": {
            size_label(size): round(found[name].ratio, 2)
            for name, size, _ in RATIO_TARGETS
            if name in found
        },
        "ratio_batched_per_chunk_paired": {
            size_label(size): round(paired, 2)
            for name, size, _ in RATIO_TARGETS
            if name in found and (paired := found[name].paired) is not None
        },
        "targets": targets,
        "storage_sync": sync_method,
        "disk_ceiling_4KiB_files_per_s": (
            round(ceiling.files_per_second, 1) if ceiling is not None else None
        ),
        "disk_ceiling_4KiB_measurements": [round(c.files_per_second, 1) for c in measured],
        "disk_ceiling_4KiB_by_sync": {
            method: round(pooled_ceiling(values).files_per_second, 1)
            for method in SYNC_METHODS
            if (values := [c for t in turns for c in t.ceilings.get(method, ())])
        },
        "batched_4KiB_vs_disk_ceiling": round(share.ratio, 2) if share is not None else None,
        "batched_4KiB_vs_disk_ceiling_paired": (
            round(share.paired, 2) if share is not None and share.paired is not None else None
        ),
        "disk_ceiling_1MiB_mb_per_s": large_figures(
            [pair for t in turns for pair in t.large_ceilings]
        ),
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
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="turns of every run, each with its own ceilings (medians and paired ratios kept)",
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
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
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
    paddings = {
        size: padding_for(size, args.max_batch_size, args.max_batch_bytes) for _, size, _ in plan
    }
    try:
        check_free_space(planned_bytes(args, plan, paddings, settings.state_dir))
    except NotEnoughDiskSpace as error:
        raise SystemExit(f"bench.blob_ingest: {error}") from None
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        organization = create_organization(
            connection, f"bench-blob-{uuid.uuid4().hex[:10]}", "blob ingest bench"
        )
    turns = range(1, args.repeat + 1)
    topics = {
        (turn, mode, size): unique_name(f"bench-blob-{mode}-{size}-{turn}")
        for turn in turns
        for mode, size, _ in plan
    }
    create_topics(
        settings,
        [TopicSpec(topic, PARTITIONS, DEFAULT_TOPIC_CONFIG) for topic in topics.values()],
    )
    scratch = Path(tempfile.mkdtemp(prefix="bench-blob-ingest-", dir=args.scratch_dir))
    done: list[Turn] = []
    # The backend's way of syncing decides which ceiling the batched run is held to; the
    # other is measured beside it for comparison.
    sync_method = choose_sync_method(scratch, parse_sync_setting(settings.blob_storage_sync))
    sync_methods: tuple[SyncMethod, ...] = (
        sync_method,
        *(m for m in SYNC_METHODS if m != sync_method),
    )

    def measure_large_ceilings(turn: Turn) -> None:
        batch = max(1, min(args.max_batch_size, args.max_batch_bytes // MIB))
        turn.large_ceilings.append(
            measure_large_file_ratio(scratch, MIB, args.disk_ceiling_files_1m, sync_method, batch)
        )

    def measure_ceilings(turn: Turn) -> None:
        for method in sync_methods:
            turn.ceilings.setdefault(method, []).append(
                measure_disk_ceiling(
                    scratch, 4 * KIB, args.disk_ceiling_files, method, args.max_batch_size
                )
            )

    # The ceilings measured right before and right after a run, to be read against it.
    ceilings_beside: dict[tuple[Mode, int], Callable[[Turn], None]] = {}
    if args.disk_ceiling_files:
        ceilings_beside[("batched", 4 * KIB)] = measure_ceilings
    if args.disk_ceiling_files_1m:
        ceilings_beside[("batched", MIB)] = measure_large_ceilings

    try:
        started = time.perf_counter()
        for (_, mode, size), topic in topics.items():
            count = next(c for m, s, c in plan if (m, s) == (mode, size))
            produce(settings, topic, organization.id, size, count + paddings[size])
        print(
            f"produced {args.repeat * sum(c + paddings[s] for _, s, c in plan):,} events "
            f"(padding included) to {len(topics)} topics "
            f"in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        for number in turns:
            turn = Turn([], {}, [])
            for mode, size, count in plan:
                turn.results.append(
                    run_once(
                        args,
                        settings,
                        RunSpec(
                            mode=mode,
                            chunk_size=size,
                            chunks=count,
                            padding=paddings[size],
                            topic=topics[(number, mode, size)],
                            organization_id=organization.id,
                            storage_root=str(scratch / f"{mode}-{size}-{number}"),
                            max_batch_size=args.max_batch_size,
                            max_batch_time_ms=args.max_batch_time_ms,
                            max_batch_bytes=args.max_batch_bytes,
                            decode_threads=args.decode_threads,
                            batches_in_flight=args.batches_in_flight,
                            timeout_seconds=args.timeout,
                            profile_path=(
                                str(args.profile / f"blob_ingest_{mode}_{size}_{number}.prof")
                                if args.profile
                                else None
                            ),
                        ),
                        number,
                        ceilings_beside.get((mode, size)),
                        turn,
                    )
                )
            done.append(turn)
        if args.disk_ceiling_files and not done[-1].ceilings:
            measure_ceilings(done[-1])
    finally:
        if args.keep_files:
            print(f"kept the files in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
        delete_topics(settings, list(topics.values()))
        if not args.keep_rows:
            remove_rows(settings, organization.id)

    print_table(done)
    for method in sync_methods:
        measured = [c for t in done for c in t.ceilings.get(method, ())]
        if not measured:
            continue
        pooled = pooled_ceiling(measured)
        print(
            f"disk ceiling, {CEILING_DESCRIPTIONS[method]} "
            f"({'the backend here' if method == sync_method else 'for comparison'}): "
            f"{pooled.files_per_second:,.0f} files/s in {args.scratch_dir} ("
            + " and ".join(f"{c.files_per_second:,.0f}" for c in measured)
            + (" before and after each batched 4 KiB run)" if len(measured) >= 2 else ")")
        )
    large_ceilings = [pair for t in done for pair in t.large_ceilings]
    if large_ceilings:
        batched, one_by_one, ratio = pooled_ratio(large_ceilings)
        print(
            f"disk ceiling, 1 MiB files ({sync_method} sync): {batched.mb_per_second:,.0f} MB/s "
            f"batched as the worker batches, {one_by_one.mb_per_second:,.0f} MB/s one at a "
            f"time by one thread: the disk's own ratio {ratio:.1f}x (means of the "
            "measurements before and after each batched 1 MiB run)"
        )
    print_target_ratios(target_ratios(done, sync_method), args.repeat)
    write_chart(median_runs(done), args.chart)
    print(f"chart: {args.chart}")
    report.print_figures(figures(done, args.chart, sync_method))


def run_once(
    args: argparse.Namespace,
    settings: Settings,
    spec: RunSpec,
    number: int,
    measure_beside: Callable[[Turn], None] | None,
    turn: Turn,
) -> RunResult:
    """One mode at one size in a fresh process, the ceilings beside it measured right before
    and right after, and its rows and files checked against what it reports."""
    mode, size = spec.mode, spec.chunk_size
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    owners_before = owner_rows(settings, spec.organization_id)
    if measure_beside is not None:
        measure_beside(turn)
    os.sync()
    result = run_in_fresh_process(spec)
    if measure_beside is not None:
        measure_beside(turn)
    owners_added = owner_rows(settings, spec.organization_id) - owners_before
    objects = stored_objects(Path(spec.storage_root))
    if not (result.persisted == result.new_blobs == owners_added == objects >= spec.chunks):
        raise RuntimeError(
            f"{mode} {size_label(size)}: expected {spec.chunks}+ new blobs, got persisted="
            f"{result.persisted} new_blobs={result.new_blobs} owners={owners_added} "
            f"objects={objects}"
        )
    print(
        f"{mode:<9} {size_label(size):>7} #{number}: {result.chunks_per_second:,.0f} chunks/s "
        f"({result.seconds:.2f} s)",
        file=sys.stderr,
    )
    if result.profile_top:
        print(f"--- profile {mode} {size_label(size)} ({spec.profile_path}) ---", file=sys.stderr)
        print(result.profile_top, file=sys.stderr)
    return result


def planned_bytes(
    args: argparse.Namespace,
    plan: Sequence[tuple[Mode, int, int]],
    paddings: Mapping[int, int],
    state_dir: Path,
) -> dict[Path, int]:
    """What the run writes, by directory: its events to the broker's log (under the stack's
    state directory), and the same chunks stored plus the disk ceilings' files to the
    scratch directory."""
    events = args.repeat * sum((count + paddings[size]) * size for _, size, count in plan)
    # Each ceiling is measured before and after its run; the 4 KiB one for both sync methods.
    ceilings = (
        2
        * args.repeat
        * (
            args.disk_ceiling_files * 4 * KIB * len(SYNC_METHODS)
            + (args.disk_ceiling_files_1m + args.disk_ceiling_files_1m // 3) * MIB
        )
    )
    return {Path(args.scratch_dir): events + ceilings, state_dir: events}


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

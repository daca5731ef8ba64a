"""The first-custom-metric flag (docs/reference.md, First-custom-metric flag), with the
reference's weaknesses fixed.

Per bucket, on the consumer thread (`custom_metrics.CustomMetricDetector`, the one
implementation of steps 1 and 2, a few dict lookups):

1. resolve the metric's name: search every inner map of `mapping_meta` for `str(metric_id)`;
2. parse it as an MRI (`^entity:namespace/name@unit$`); act only when the namespace is exactly
   `custom` (the verdict per name is cached, so the regex runs once per distinct name);
3. skip when this process already knows the project is flagged (`KnownProjects`); otherwise
   the `(org_id, project_id)` pair becomes a *candidate* of the current batch.

Per batch of candidates, on the flag writer's thread (`FlagWriter` → `ProjectFlagStore`, a
handful of round trips per batch, never one per message):

4. Redis: which keys `has-custom-metrics-flag-updated:{org_id}:{project_id}` exist (one
   pipeline); those projects are skipped;
5. PostgreSQL, one transaction: lock the candidate rows whose bit is clear (in id order, so two
   workers cannot deadlock), `UPDATE projects SET flags = flags | 65536 ... WHERE flags & 65536
   = 0 RETURNING ...` and, in the same statement, insert one `first_custom_metric.sent` row
   into `analytics_events` for each project the update returned. Only the transaction that
   flips the bit gets the row back, so the event is recorded exactly once per project however
   many workers race (a partial unique index on `analytics_events` is the second guard);
6. Redis: set the keys of every project that exists (TTL 604800 s), only after the commit.

A project that does not exist (or belongs to another organization) is counted and skipped;
the answer is remembered for `missing_ttl_seconds` so a stream of buckets for it does not
query the database every batch. A Redis or PostgreSQL error fails the attempt: it is logged
(ids and error class, never payloads or URLs), counted and retried with exponential backoff,
forever, until it succeeds or the writer is closed. A job is marked done only when every step
succeeded; the chain commits a batch's offsets only after its job is done, so a crash at any
point replays the batch and the conditional update makes the replay harmless.

`user_id` of the analytics event is NULL: the fleet's schema has no users (the reference
records the organization's default owner).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import psycopg
from redis import Redis
from redis.exceptions import RedisError

from workers.billing.metrics import (
    CHECK_ALREADY_FLAGGED,
    CHECK_FLAGGED,
    CHECK_MISSING_PROJECT,
    CHECK_REDIS_KEY,
    STORE_POSTGRES,
    STORE_REDIS,
    BillingMetrics,
)
from workers.billing.tally import StepRecorder
from workers.common.backoff import Backoff
from workers.common.projects import HAS_CUSTOM_METRICS_FLAG

logger = logging.getLogger(__name__)

FLAG_KEY_TTL_SECONDS: Final = 604_800  # 7 days
FIRST_CUSTOM_METRIC_EVENT: Final = "first_custom_metric.sent"
DEFAULT_KNOWN_CAPACITY: Final = 100_000
DEFAULT_MISSING_TTL_SECONDS: Final = 60.0
DEFAULT_CONNECT_TIMEOUT_SECONDS: Final = 5.0
#: Candidates handled in one round of the writer (several queued jobs are merged).
MAX_CANDIDATES_PER_ROUND: Final = 5_000

_INT64_MAX: Final = (1 << 63) - 1

ProjectKey = tuple[int, int]  # (org_id, project_id)


def flag_cache_key(org_id: int, project_id: int) -> str:
    """The reference's Redis key; it exists once the project's flag is known to be set."""
    return f"has-custom-metrics-flag-updated:{org_id}:{project_id}"


class KnownProjects:
    """Projects this process knows to be flagged; bounded (cleared when full).

    Written by the flag writer's thread, read by the consumer thread: single set operations
    are atomic in CPython, and a miss only costs a redundant (harmless) check.
    """

    __slots__ = ("_capacity", "_known")

    def __init__(self, capacity: int = DEFAULT_KNOWN_CAPACITY) -> None:
        self._capacity = capacity
        self._known: set[ProjectKey] = set()

    def __contains__(self, key: object) -> bool:
        return key in self._known

    def __len__(self) -> int:
        return len(self._known)

    def add_all(self, keys: Iterable[ProjectKey]) -> None:
        for key in keys:
            if len(self._known) >= self._capacity:
                self._known.clear()
            self._known.add(key)


@dataclass
class FlagCheck:
    """What one round found, per candidate."""

    redis_key: set[ProjectKey] = field(default_factory=set)
    flagged: set[ProjectKey] = field(default_factory=set)
    already_flagged: set[ProjectKey] = field(default_factory=set)
    missing: set[ProjectKey] = field(default_factory=set)

    @property
    def existing(self) -> set[ProjectKey]:
        return self.flagged | self.already_flagged


class FlagStoreError(RuntimeError):
    """A round failed in one of the stores; `store` is `redis` or `postgres`."""

    def __init__(self, store: str, cause: BaseException) -> None:
        super().__init__(f"{store}: {type(cause).__name__}")
        self.store = store


class FlagStore(Protocol):
    def check_and_flag(self, candidates: Collection[ProjectKey]) -> FlagCheck: ...

    def close(self) -> None: ...


_FLAG_STATEMENT: Final = """
WITH candidates AS (
    SELECT DISTINCT c.id, c.organization_id
    FROM unnest(%(project_ids)s::bigint[], %(organization_ids)s::bigint[])
        AS c(id, organization_id)
),
locked AS (
    SELECT p.id
    FROM projects p
    JOIN candidates c ON c.id = p.id AND c.organization_id = p.organization_id
    WHERE p.flags & %(flag)s = 0
    ORDER BY p.id
    FOR UPDATE OF p
),
flagged AS (
    UPDATE projects p
    SET flags = p.flags | %(flag)s
    FROM locked
    WHERE p.id = locked.id AND p.flags & %(flag)s = 0
    RETURNING p.id, p.organization_id, p.platform
),
events AS (
    INSERT INTO analytics_events (event_type, organization_id, project_id, platform, user_id)
    SELECT %(event)s, organization_id, id, platform, NULL FROM flagged
    ON CONFLICT DO NOTHING
    RETURNING project_id
)
SELECT c.organization_id, c.id, p.id IS NOT NULL, f.id IS NOT NULL
FROM candidates c
LEFT JOIN projects p ON p.id = c.id AND p.organization_id = c.organization_id
LEFT JOIN flagged f ON f.id = c.id
"""


class ProjectFlagStore:
    """The Redis and PostgreSQL side of one round (steps 4 to 6 of the module docstring).

    Holds one PostgreSQL connection, opened lazily and dropped after an error so the next
    attempt reconnects. Used only by the flag writer's thread.
    """

    def __init__(
        self,
        database_url: str,
        redis: Redis,
        *,
        metrics: BillingMetrics | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_SECONDS,
        key_ttl_seconds: int = FLAG_KEY_TTL_SECONDS,
    ) -> None:
        self._database_url = database_url
        self._redis = redis
        self._metrics = metrics
        self._connect_timeout = connect_timeout
        self._key_ttl = key_ttl_seconds
        self._connection: psycopg.Connection[tuple[Any, ...]] | None = None

    def check_and_flag(self, candidates: Collection[ProjectKey]) -> FlagCheck:
        check = FlagCheck()
        wanted: list[ProjectKey] = []
        for key in candidates:
            org_id, project_id = key
            if org_id > _INT64_MAX or project_id > _INT64_MAX:
                check.missing.add(key)  # no BIGINT id can match
            else:
                wanted.append(key)
        if not wanted:
            return check
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                for org_id, project_id in wanted:
                    pipe.exists(flag_cache_key(org_id, project_id))
                exists = pipe.execute()
        except RedisError as error:
            raise FlagStoreError(STORE_REDIS, error) from error
        unknown = []
        for key, found in zip(wanted, exists, strict=True):
            if found:
                check.redis_key.add(key)
            else:
                unknown.append(key)
        if not unknown:
            return check

        rows = self._update(unknown)
        for org_id, project_id, exists_row, flagged_now in rows:
            key = (int(org_id), int(project_id))
            if not exists_row:
                check.missing.add(key)
            elif flagged_now:
                check.flagged.add(key)
            else:
                check.already_flagged.add(key)
        if check.flagged:
            logger.info(
                "first custom metric: project flags set",
                extra={
                    "projects": sorted(project for _, project in check.flagged)[:50],
                    "count": len(check.flagged),
                },
            )
            if self._metrics is not None:
                self._metrics.flags_set(len(check.flagged))

        existing = check.existing
        if existing:
            try:
                with self._redis.pipeline(transaction=False) as pipe:
                    for org_id, project_id in existing:
                        pipe.set(flag_cache_key(org_id, project_id), b"1", ex=self._key_ttl)
                    pipe.execute()
            except RedisError as error:
                raise FlagStoreError(STORE_REDIS, error) from error
        return check

    def _update(self, keys: list[ProjectKey]) -> list[tuple[int, int, bool, bool]]:
        try:
            connection = self._connect()
            with connection.transaction(), connection.cursor() as cursor:
                cursor.execute(
                    _FLAG_STATEMENT,
                    {
                        "project_ids": [project for _, project in keys],
                        "organization_ids": [org for org, _ in keys],
                        "flag": HAS_CUSTOM_METRICS_FLAG,
                        "event": FIRST_CUSTOM_METRIC_EVENT,
                    },
                )
                rows: list[tuple[int, int, bool, bool]] = cursor.fetchall()
            return rows
        except psycopg.Error as error:
            self._drop_connection()
            raise FlagStoreError(STORE_POSTGRES, error) from error

    def _connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        connection = self._connection
        if connection is None or connection.closed:
            connection = psycopg.connect(
                self._database_url,
                connect_timeout=max(1, round(self._connect_timeout)),
                application_name="billing-flags",
            )
            self._connection = connection
        return connection

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(psycopg.Error):
                connection.close()

    def close(self) -> None:
        self._drop_connection()
        self._redis.close()


class FlagJob:
    """The flag work of one batch; `done` turns True (once) when every step succeeded."""

    __slots__ = ("candidates", "done")

    def __init__(self, candidates: frozenset[ProjectKey]) -> None:
        self.candidates = candidates
        self.done = not candidates


_STOP: Final = object()


class FlagWriter:
    """Runs flag jobs on one background thread, in order, retrying failures with backoff.

    The consumer thread calls `submit` (never blocks) and later reads `job.done`; the thread is
    started by the first `submit`. Several queued jobs are merged into one round. `close()`
    stops the thread: a job still failing then stays not done (its offsets stay uncommitted).
    """

    def __init__(
        self,
        store_factory: Callable[[], FlagStore],
        *,
        metrics: BillingMetrics,
        step: StepRecorder | None = None,
        known: KnownProjects | None = None,
        backoff: Backoff | None = None,
        missing_ttl_seconds: float = DEFAULT_MISSING_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store_factory = store_factory
        self._store: FlagStore | None = None
        self._metrics = metrics
        self._step = step
        self.known = known if known is not None else KnownProjects()
        self._backoff = backoff if backoff is not None else Backoff()
        self._missing_ttl = missing_ttl_seconds
        self._clock = clock
        self._missing: dict[ProjectKey, float] = {}
        self._queue: queue.SimpleQueue[FlagJob | object] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0

    def submit(self, candidates: frozenset[ProjectKey]) -> FlagJob:
        job = FlagJob(candidates)
        if job.done:
            return job
        if self._stop.is_set():
            raise RuntimeError("the flag writer is closed")
        with self._lock:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="billing-flag-writer", daemon=True
                )
                self._thread.start()
        self._queue.put(job)
        return job

    @property
    def pending(self) -> int:
        """Jobs submitted and not done yet."""
        return self._pending

    def close(self, timeout: float | None = None) -> None:
        """Stop the thread (after the job in hand succeeds or its retry wait is cut short)."""
        self._stop.set()
        self._queue.put(_STOP)
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("flag writer did not stop within %.1f s", timeout or 0.0)
                return
        store, self._store = self._store, None
        if store is not None:
            store.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            first = self._queue.get()
            if first is _STOP:
                return
            assert isinstance(first, FlagJob)
            jobs = [first]
            size = len(first.candidates)
            while size < MAX_CANDIDATES_PER_ROUND:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self._stop.set()
                    break
                assert isinstance(more, FlagJob)
                jobs.append(more)
                size += len(more.candidates)
            if not self._handle(jobs):
                return

    def _handle(self, jobs: list[FlagJob]) -> bool:
        """One round for `jobs`, retried until it succeeds; False when stopped first."""
        candidates: set[ProjectKey] = set()
        for job in jobs:
            candidates.update(job.candidates)
        known = self.known
        now = self._clock()
        todo = []
        missing_cached = 0
        for key in candidates:
            if key in known:
                continue
            expiry = self._missing.get(key)
            if expiry is not None and expiry > now:
                missing_cached += 1
                continue
            todo.append(key)
        while todo:
            try:
                store = self._store
                if store is None:
                    store = self._store = self._store_factory()
                check = store.check_and_flag(todo)
            except FlagStoreError as error:
                self._retry_later(error.store, error.__cause__ or error, len(todo))
            except (RedisError, psycopg.Error, OSError) as error:
                store_name = STORE_REDIS if isinstance(error, RedisError) else STORE_POSTGRES
                self._retry_later(store_name, error, len(todo))
            else:
                self._backoff.reset()
                self._record(check)
                break
            if self._stop.wait(self._backoff.next_delay()):
                return False
        self._metrics.custom_metric_checks(CHECK_MISSING_PROJECT, missing_cached)
        if self._step is not None:
            self._step.message_out(len(candidates))
        with self._lock:
            self._pending -= len(jobs)
        for job in jobs:
            job.done = True
        return True

    def _retry_later(self, store: str, error: BaseException, candidates: int) -> None:
        self._metrics.flag_error(store)
        logger.warning(
            "flag work failed; retrying with backoff",
            extra={"store": store, "error": type(error).__name__, "candidates": candidates},
        )

    def _record(self, check: FlagCheck) -> None:
        metrics = self._metrics
        metrics.custom_metric_checks(CHECK_REDIS_KEY, len(check.redis_key))
        metrics.custom_metric_checks(CHECK_FLAGGED, len(check.flagged))
        metrics.custom_metric_checks(CHECK_ALREADY_FLAGGED, len(check.already_flagged))
        metrics.custom_metric_checks(CHECK_MISSING_PROJECT, len(check.missing))
        self.known.add_all(check.redis_key)
        self.known.add_all(check.existing)
        if check.missing:
            expiry = self._clock() + self._missing_ttl
            if len(self._missing) > DEFAULT_KNOWN_CAPACITY:
                self._missing.clear()
            for key in check.missing:
                self._missing[key] = expiry
            logger.info(
                "custom metrics for unknown projects skipped",
                extra={
                    "projects": sorted(project for _, project in check.missing)[:50],
                    "count": len(check.missing),
                },
            )

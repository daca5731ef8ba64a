"""Worker-id leases in Redis and the heartbeat thread that keeps one.

A leased-layout generator owns a worker id (0..1023) while it holds the Redis key
`workers:snowflake:leased:{<namespace>}:lease:<worker id>` (value: a random token, `PX` ttl).
Next to it, `...:hwm:<worker id>` (a hash, kept 7 days) records the *high-water mark*: a unix
millisecond no id of that worker id has exceeded when the mark was written, the writer's
lease ttl, and whether the writer released the lease cleanly. A new holder may only issue ids
later than the *floor*: the mark, plus the previous holder's ttl unless it released cleanly.

Why that is enough (the previous holder's clock may disagree with ours, or it may be
paused): every successful renewal writes a mark >= the wall-clock millisecond at which the
renewal request started, W, and the holder then refuses ids from millisecond
`W + ttl - safety margin` on (its deadline, `LeasedSnowflakeGenerator`). So the old holder's
ids stay below `mark + ttl` and the new holder's lie above it: the two ranges are disjoint by
value, whatever the clocks and pauses. Marks only grow (the scripts keep the maximum).

`WorkerIdLeases` does the Redis side (three Lua scripts, each one round trip); `LeaseHeartbeat`
is the daemon thread that renews every ttl/3 and re-acquires after a loss; the generator hears
about both through the `LeaseListener` protocol. The acquisition script starts at a random
worker id and takes the first free one whose floor has passed, else the free one with the
lowest floor; it derives key names from the namespace prefix, so it needs a standalone Redis
or a Cluster that tolerates undeclared keys of one slot (the hash tag).
"""

from __future__ import annotations

import contextlib
import logging
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from workers.common.snowflake._keys import KEY_PREFIX, validate_key_part
from workers.common.snowflake.errors import (
    IdGeneratorUnavailable,
    NoFreeWorkerId,
    RedisUnavailableError,
)

logger = logging.getLogger(__name__)

WORKER_ID_BITS: Final = 10
WORKER_ID_COUNT: Final = 1 << WORKER_ID_BITS
#: How long a high-water mark outlives its last write.
HIGH_WATER_RETENTION_SECONDS: Final = 7 * 24 * 3600
DEFAULT_LEASE_TTL_SECONDS: Final = 10.0
NS_PER_MS: Final = 1_000_000

# ARGV: prefix, token, ttl ms, now (unix ms), first worker id, count, start offset, retention.
# Returns {worker id, floor ms} or nil when every worker id is leased.
_ACQUIRE_SCRIPT: Final = """
local prefix = ARGV[1]
local token = ARGV[2]
local ttl_ms = tonumber(ARGV[3])
local now_ms = tonumber(ARGV[4])
local first = tonumber(ARGV[5])
local count = tonumber(ARGV[6])
local start = tonumber(ARGV[7])
local retention = tonumber(ARGV[8])
local chosen = nil
local chosen_floor = nil
for i = 0, count - 1 do
  local worker_id = first + (start + i) % count
  if redis.call('EXISTS', prefix .. 'lease:' .. worker_id) == 0 then
    local mark = redis.call('HMGET', prefix .. 'hwm:' .. worker_id, 'ms', 'ttl_ms', 'released')
    local floor = 0
    if mark[1] then
      floor = tonumber(mark[1])
      if mark[3] ~= '1' then
        floor = floor + tonumber(mark[2] or ARGV[3])
      end
    end
    if chosen == nil or floor < chosen_floor then
      chosen = worker_id
      chosen_floor = floor
    end
    if floor < now_ms then
      break
    end
  end
end
if chosen == nil then
  return false
end
redis.call('SET', prefix .. 'lease:' .. chosen, token, 'NX', 'PX', ttl_ms)
local hwm = prefix .. 'hwm:' .. chosen
redis.call('HSET', hwm, 'ms', string.format('%d', math.max(now_ms, chosen_floor)),
  'ttl_ms', ARGV[3], 'released', '0')
redis.call('EXPIRE', hwm, retention)
return {chosen, chosen_floor}
"""

# KEYS: lease, high-water mark. ARGV: token, ttl ms, mark (unix ms), retention, released.
# Renews (released = 0) or deletes (released = 1) the lease, only if it still holds our token.
_RENEW_OR_RELEASE_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local mark = tonumber(ARGV[3])
local current = tonumber(redis.call('HGET', KEYS[2], 'ms') or '0')
if current > mark then
  mark = current
end
redis.call('HSET', KEYS[2], 'ms', string.format('%d', mark), 'ttl_ms', ARGV[2],
  'released', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""


@dataclass(frozen=True)
class WorkerLease:
    """One acquired worker id. `floor_ms`: ids of this worker id must be later (unix ms)."""

    namespace: str
    worker_id: int
    token: str
    floor_ms: int


class LeaseStore(Protocol):
    """Where worker ids are leased; `WorkerIdLeases` is the Redis implementation.

    Every method raises `IdGeneratorUnavailable` (usually `RedisUnavailableError`) when the
    store cannot answer.
    """

    @property
    def namespace(self) -> str: ...

    @property
    def ttl_ms(self) -> int: ...

    def acquire(self, now_ms: int) -> WorkerLease:
        """Lease a free worker id, or raise `NoFreeWorkerId`."""
        ...

    def renew(self, lease: WorkerLease, high_water_ms: int) -> bool:
        """Extend the lease by the ttl and record the mark; False if it is no longer ours."""
        ...

    def release(self, lease: WorkerLease, high_water_ms: int) -> bool:
        """Delete the lease (if still ours), recording a final mark; False if not ours."""
        ...


def lease_redis_client(url: str, ttl: float = DEFAULT_LEASE_TTL_SECONDS) -> Redis:
    """A Redis client fit for leases: every call, retries included, ends well within ttl/3.

    redis-py's defaults (no socket timeout, 10 retries with backoff) can keep a renewal
    waiting much longer than the lease lives; the generator then refuses ids (safely) but
    cannot notice that Redis is back until the call returns.
    """
    timeout = max(0.05, ttl / 15)
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), retries=1),
    )


class WorkerIdLeases:
    """Worker-id leases of one namespace in Redis.

    Give it a client whose calls end well within ttl/3 (`lease_redis_client`), so that a
    hung Redis turns into a renewal error, and a retry, in time.
    """

    def __init__(
        self,
        redis: Redis,
        namespace: str,
        ttl: float = DEFAULT_LEASE_TTL_SECONDS,
        worker_ids: range = range(WORKER_ID_COUNT),
    ) -> None:
        self._namespace = validate_key_part("namespace", namespace)
        if not 0.05 <= ttl <= 3600:
            raise ValueError(f"lease ttl must be 0.05..3600 seconds, got {ttl}")
        if (
            len(worker_ids) == 0
            or worker_ids.step != 1
            or worker_ids.start < 0
            or worker_ids.stop > WORKER_ID_COUNT
        ):
            raise ValueError(
                f"worker_ids must be a non-empty contiguous range within 0..{WORKER_ID_COUNT - 1}"
                f", got {worker_ids!r}"
            )
        self._ttl_ms = round(ttl * 1000)
        self._worker_ids = worker_ids
        self._prefix = f"{KEY_PREFIX}leased:{{{namespace}}}:"
        self._acquire_script = redis.register_script(_ACQUIRE_SCRIPT)
        self._renew_script = redis.register_script(_RENEW_OR_RELEASE_SCRIPT)
        self._random = random.Random()

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def ttl_ms(self) -> int:
        return self._ttl_ms

    def lease_key(self, worker_id: int) -> str:
        return f"{self._prefix}lease:{worker_id}"

    def high_water_key(self, worker_id: int) -> str:
        return f"{self._prefix}hwm:{worker_id}"

    def acquire(self, now_ms: int) -> WorkerLease:
        token = secrets.token_hex(16)
        start = self._random.randrange(len(self._worker_ids))
        reply = self._call(
            "acquisition",
            lambda: self._acquire_script(
                args=[
                    self._prefix,
                    token,
                    self._ttl_ms,
                    now_ms,
                    self._worker_ids.start,
                    len(self._worker_ids),
                    start,
                    HIGH_WATER_RETENTION_SECONDS,
                ]
            ),
        )
        if reply is None:
            raise NoFreeWorkerId(
                f"all {len(self._worker_ids)} worker ids of snowflake namespace "
                f"{self._namespace!r} are leased by other generators; stop some or widen "
                "the worker-id range"
            )
        lease = WorkerLease(self._namespace, int(reply[0]), token, int(reply[1]))
        logger.info(
            "leased snowflake worker id",
            extra={
                "namespace": self._namespace,
                "worker_id": lease.worker_id,
                "floor_ms": lease.floor_ms,
                "ttl_ms": self._ttl_ms,
            },
        )
        return lease

    def renew(self, lease: WorkerLease, high_water_ms: int) -> bool:
        return self._renew_or_release("renewal", lease, high_water_ms, released=False)

    def release(self, lease: WorkerLease, high_water_ms: int) -> bool:
        return self._renew_or_release("release", lease, high_water_ms, released=True)

    def _renew_or_release(
        self, operation: str, lease: WorkerLease, high_water_ms: int, released: bool
    ) -> bool:
        reply = self._call(
            operation,
            lambda: self._renew_script(
                keys=[self.lease_key(lease.worker_id), self.high_water_key(lease.worker_id)],
                args=[
                    lease.token,
                    self._ttl_ms,
                    high_water_ms,
                    HIGH_WATER_RETENTION_SECONDS,
                    1 if released else 0,
                ],
            ),
        )
        return int(reply) == 1

    def _call(self, operation: str, command: Callable[[], Any]) -> Any:
        try:
            return command()
        except RedisError as error:
            raise RedisUnavailableError(
                f"worker-id lease {operation} in snowflake namespace {self._namespace!r} "
                f"failed: Redis error ({type(error).__name__}: {error})"
            ) from error


@dataclass(frozen=True)
class Clocks:
    """The clocks a leased generator reads; injectable for tests."""

    wall_ns: Callable[[], int] = time.time_ns
    monotonic_ns: Callable[[], int] = time.monotonic_ns
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class ClockReading:
    """Both clocks, read at the start of a lease request."""

    wall_ms: int
    monotonic_ns: int

    @classmethod
    def read(cls, clocks: Clocks) -> ClockReading:
        return cls(clocks.wall_ns() // NS_PER_MS, clocks.monotonic_ns())


class LeaseListener(Protocol):
    """What the heartbeat tells the generator; called from the heartbeat thread."""

    def high_water_ms(self, now_ms: int) -> int:
        """The mark to record: no id issued so far, or before `now_ms`, is later."""
        ...

    def lease_acquired(self, lease: WorkerLease, started: ClockReading) -> None: ...

    def lease_renewed(self, lease: WorkerLease, started: ClockReading) -> None: ...

    def lease_lost(self, lease: WorkerLease, reason: str) -> None: ...

    def lease_unavailable(self, reason: str) -> None:
        """A renewal or acquisition attempt failed; `reason` says why (for error messages)."""
        ...


class LeaseHeartbeat:
    """Daemon thread: renews the lease every `renew_interval`, re-acquires after a loss.

    A failed attempt (Redis unreachable, no free worker id) is retried every
    `retry_interval`. A renewal that finds another token in the key means the lease is lost:
    the listener hears it at once and a new worker id is acquired.
    """

    def __init__(
        self,
        store: LeaseStore,
        listener: LeaseListener,
        clocks: Clocks,
        renew_interval: float,
        retry_interval: float,
    ) -> None:
        self._store = store
        self._listener = listener
        self._clocks = clocks
        self._renew_interval = renew_interval
        self._retry_interval = retry_interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lease: WorkerLease | None = None

    def start(self, lease: WorkerLease) -> None:
        if self._thread is not None:
            raise RuntimeError("the lease heartbeat was already started")
        self._lease = lease
        self._thread = threading.Thread(
            target=self._run, name=f"snowflake-lease-{self._store.namespace}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop the thread; False if it did not finish within `timeout` seconds."""
        self._stopping.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        delay = self._renew_interval
        while not self._stopping.wait(delay):
            try:
                delay = self._beat()
            except Exception:
                # Never let the thread die: without it the generator would refuse forever.
                logger.exception(
                    "snowflake lease heartbeat failed unexpectedly",
                    extra={"namespace": self._store.namespace},
                )
                delay = self._retry_interval

    def _beat(self) -> float:
        started = ClockReading.read(self._clocks)
        lease = self._lease
        if lease is None:
            return self._acquire(started)
        try:
            renewed = self._store.renew(lease, self._listener.high_water_ms(started.wall_ms))
        except IdGeneratorUnavailable as error:
            self._listener.lease_unavailable(str(error))
            return self._retry_interval
        if renewed:
            self._listener.lease_renewed(lease, started)
            return self._renew_interval
        self._lease = None
        self._listener.lease_lost(
            lease,
            f"the lease on worker id {lease.worker_id} in snowflake namespace "
            f"{lease.namespace!r} is held by someone else or expired",
        )
        return 0.0

    def _acquire(self, started: ClockReading) -> float:
        try:
            lease = self._store.acquire(started.wall_ms)
        except IdGeneratorUnavailable as error:
            self._listener.lease_unavailable(str(error))
            return self._retry_interval
        if self._stopping.is_set():
            # Stopped while acquiring: hand the worker id straight back (best effort).
            with contextlib.suppress(IdGeneratorUnavailable):
                self._store.release(lease, max(started.wall_ms, lease.floor_ms))
            return 0.0
        self._lease = lease
        self._listener.lease_acquired(lease, started)
        return self._renew_interval

"""High-throughput ("blob") snowflake ids: a leased worker id, no Redis round trip per id.

Layout: a positive 63-bit integer (fits PostgreSQL `BIGINT`), most significant first:

| segment | bits | value |
|---|---|---|
| sign | 1 | 0 |
| milliseconds since 2022-08-08T00:00:00Z | 41 | 2**31 .. 2**41 - 1 (2022-09-01 .. 2092-04-13) |
| worker id | 10 | 0..1023, leased in Redis |
| sequence | 12 | 0..4095 within one millisecond of one worker id |

`id = ms << 22 | worker_id << 12 | sequence`, where `ms` counts from the Sentry layout's
epoch. Timestamps start at 2**31 ms (2022-09-01T20:31:23.648Z), so every blob-layout id is
>= 2**53 while every Sentry-layout id is < 2**53: the two layouts never overlap and an id
alone tells which one it is.

Capacity:
- per worker id (one generator, i.e. one process): 4096 ids per millisecond, 4,096,000 ids/s
  in theory; one CPython process reaches about 1-2 million ids/s with `generate()` and close
  to the 4,096,000 ceiling with `generate_batch()` (see `python -m bench.ids`);
- workers: 1024 generators at once per namespace (per Redis), e.g. 1024 processes in any
  mix of pods; a deployment can split the range (`WorkerIdLeases(worker_ids=range(...))`),
  e.g. 4 regions x 256 workers sharing one id space;
- fleet: 1024 x 4,096,000 = about 4.2 billion ids/s;
- range: 2**41 ms = 69.6 years from the epoch, until 2092-04-13.

Ids sort by millisecond across the fleet (then worker id, then sequence): roughly time
ordered, as far as the hosts' clocks agree. `decode_leased_id` returns the parts.

Why this layout: 12 bits of sequence (4.1 million ids/s) match what one Python process can
issue at best (batches), so a generator is a process and more bits would be wasted; 10 bits
of worker id cover far more consumer processes than the topics have partitions; 41 bits of
milliseconds give the usual ~70 years. Leasing whole blocks of sequence numbers instead would
need no clock, but one Redis round trip per block, and would lose the decodable timestamp.

Uniqueness: a worker id is leased in Redis (`SET NX PX`, `lease.WorkerIdLeases`) and renewed
every ttl/3 by a daemon thread (`lease.LeaseHeartbeat`). The generator issues an id only
while the lease is surely valid: from the start of the last successful renewal (wall clock W,
monotonic M) it stops at wall millisecond `W + ttl - margin` and at monotonic `M + ttl -
margin`, whichever comes first. The wall deadline is part of every id (the window of the
current millisecond is only opened below it); the monotonic one is checked whenever a new
millisecond starts. A lost lease (another token in the key, or the renewal script found the
key gone) stops issuing at once; then, and after a failed renewal whose deadline has passed,
the thread keeps trying to renew or re-acquire (possibly another worker id) and issuing
resumes by itself when Redis answers again. A new holder of a worker id only issues ids
later than the previous holder's high-water mark + its ttl (see `lease`), which keeps the
ids of two holders of one worker id apart even with skewed clocks or a paused process.
Within a process: ids never repeat, the wall clock moving back by at most `max_clock_wait_ms`
is waited out, a larger step back is refused (`ClockMovedBackwardsError`) until the clock
has caught up, and a spent millisecond (4096 ids) waits for the next one.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Final

from workers.common.snowflake.errors import (
    ClockMovedBackwardsError,
    IdGeneratorUnavailable,
    InvalidSnowflakeId,
    LeaseLostError,
)
from workers.common.snowflake.lease import (
    NS_PER_MS,
    WORKER_ID_BITS,
    ClockReading,
    Clocks,
    LeaseHeartbeat,
    LeaseStore,
    WorkerLease,
)
from workers.common.snowflake.sentry_layout import SENTRY_EPOCH_SECONDS

logger = logging.getLogger(__name__)

LEASED_EPOCH_MS: Final = SENTRY_EPOCH_SECONDS * 1000
LEASED_ID_BITS: Final = 63
TIMESTAMP_BITS: Final = 41
SEQUENCE_BITS: Final = 12
WORKER_ID_SHIFT: Final = SEQUENCE_BITS
TIMESTAMP_SHIFT: Final = WORKER_ID_BITS + SEQUENCE_BITS
MAX_WORKER_ID: Final = (1 << WORKER_ID_BITS) - 1
MAX_SEQUENCE: Final = (1 << SEQUENCE_BITS) - 1
#: Offsets (ms since the epoch) below 2**31 are never used: blob ids are >= 2**53.
MIN_OFFSET_MS: Final = 1 << 31
MAX_OFFSET_MS: Final = (1 << TIMESTAMP_BITS) - 1
MIN_LEASED_ID: Final = MIN_OFFSET_MS << TIMESTAMP_SHIFT
DEFAULT_MAX_CLOCK_WAIT_MS: Final = 5


_EPOCH: Final = datetime.fromtimestamp(SENTRY_EPOCH_SECONDS, tz=UTC)
_UNIX_EPOCH: Final = datetime.fromtimestamp(0, tz=UTC)
_ONE_MS: Final = timedelta(milliseconds=1)


@dataclass(frozen=True)
class LeasedIdParts:
    """A decoded blob-layout id; `timestamp` has millisecond precision."""

    timestamp: datetime
    worker_id: int
    sequence: int

    @property
    def unix_ms(self) -> int:
        return (self.timestamp - _UNIX_EPOCH) // _ONE_MS


def encode_leased_id(unix_ms: int, worker_id: int, sequence: int) -> int:
    """The id of `unix_ms` (UTC), `worker_id` and `sequence`; validated."""
    offset = unix_ms - LEASED_EPOCH_MS
    if not MIN_OFFSET_MS <= offset <= MAX_OFFSET_MS:
        raise InvalidSnowflakeId(
            f"timestamp {unix_ms} is outside the blob layout's range "
            f"{LEASED_EPOCH_MS + MIN_OFFSET_MS}..{LEASED_EPOCH_MS + MAX_OFFSET_MS} (unix ms)"
        )
    if not 0 <= worker_id <= MAX_WORKER_ID:
        raise InvalidSnowflakeId(f"worker id must be 0..{MAX_WORKER_ID}, got {worker_id}")
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise InvalidSnowflakeId(f"sequence must be 0..{MAX_SEQUENCE}, got {sequence}")
    return offset << TIMESTAMP_SHIFT | worker_id << WORKER_ID_SHIFT | sequence


def decode_leased_id(snowflake_id: int) -> LeasedIdParts:
    """Timestamp (UTC), worker id and sequence of a blob-layout id, else InvalidSnowflakeId."""
    if isinstance(snowflake_id, bool) or not isinstance(snowflake_id, int):
        raise InvalidSnowflakeId(f"a snowflake id is an int, got {type(snowflake_id).__name__}")
    if not MIN_LEASED_ID <= snowflake_id < 1 << LEASED_ID_BITS:
        raise InvalidSnowflakeId(
            f"{snowflake_id} is not a blob-layout id: those are 2**53 .. 2**63 - 1"
        )
    offset = snowflake_id >> TIMESTAMP_SHIFT
    return LeasedIdParts(
        timestamp=_EPOCH + offset * _ONE_MS,
        worker_id=(snowflake_id >> WORKER_ID_SHIFT) & MAX_WORKER_ID,
        sequence=snowflake_id & MAX_SEQUENCE,
    )


def _iso_ms(unix_ms: int) -> str:
    return (_UNIX_EPOCH + unix_ms * _ONE_MS).isoformat(timespec="milliseconds")


class LeasedSnowflakeGenerator:
    """Issues blob-layout ids under a worker-id lease; thread-safe; see the module docstring.

    `start()` (or `with`) leases a worker id (raising `IdGeneratorUnavailable` when Redis is
    unreachable or every worker id is taken) and starts the heartbeat; `release()` stops
    issuing, stops the heartbeat and deletes the lease if it is still ours. `generate()` and
    `generate_batch()` raise `IdGeneratorUnavailable` (`LeaseLostError`,
    `ClockMovedBackwardsError`, ...) instead of issuing an id that might not be unique.

    Defaults derive from the store's ttl: safety margin ttl/5, renewal every ttl/3, retry of
    a failed attempt every min(ttl/10, 1 s).
    """

    def __init__(
        self,
        leases: LeaseStore,
        *,
        safety_margin: float | None = None,
        renew_interval: float | None = None,
        retry_interval: float | None = None,
        max_clock_wait_ms: int = DEFAULT_MAX_CLOCK_WAIT_MS,
        stop_timeout: float = 5.0,
        clocks: Clocks | None = None,
    ) -> None:
        ttl = leases.ttl_ms / 1000
        self._margin_ms = round((ttl / 5 if safety_margin is None else safety_margin) * 1000)
        renew = ttl / 3 if renew_interval is None else renew_interval
        retry = min(ttl / 10, 1.0) if retry_interval is None else retry_interval
        if not 0 <= self._margin_ms < leases.ttl_ms:
            raise ValueError(f"safety margin must be 0 <= margin < ttl ({ttl} s)")
        if not 0 < renew * 1000 < leases.ttl_ms - self._margin_ms:
            raise ValueError(
                f"renew interval {renew} s must be positive and shorter than ttl - safety "
                f"margin ({(leases.ttl_ms - self._margin_ms) / 1000} s)"
            )
        if retry <= 0:
            raise ValueError(f"retry interval must be positive, got {retry}")
        if max_clock_wait_ms < 0:
            raise ValueError(f"max_clock_wait_ms must be >= 0, got {max_clock_wait_ms}")
        self._leases = leases
        self._clocks = clocks if clocks is not None else Clocks()
        self._wall_ns = self._clocks.wall_ns
        self._monotonic_ns = self._clocks.monotonic_ns
        self._max_clock_wait_ms = max_clock_wait_ms
        self._stop_timeout = stop_timeout
        self._heartbeat = LeaseHeartbeat(leases, self, self._clocks, renew, retry)
        self._lock = threading.Lock()
        # Everything below is guarded by `_lock`.
        self._status = "new"  # new → running → closed
        self._lease: WorkerLease | None = None
        self._lost_reason: str | None = None
        self._last_error: str | None = None
        self._worker_bits = 0
        self._floor_ms = 0
        self._deadline_ms = -1
        self._deadline_monotonic_ns = -1
        self._renewed_monotonic_ns = 0
        self._last_ms = 0
        self._sequence = MAX_SEQUENCE
        # The current millisecond's window: [start, end) in wall ns, and its id base.
        self._window_start_ns = 0
        self._window_end_ns = 0
        self._window_base = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> LeasedSnowflakeGenerator:
        with self._lock:
            if self._status != "new":
                raise RuntimeError(f"start() may be called once; the generator is {self._status}")
        started = ClockReading.read(self._clocks)
        lease = self._leases.acquire(started.wall_ms)
        with self._lock:
            self._status = "running"
        self.lease_acquired(lease, started)
        self._heartbeat.start(lease)
        return self

    def release(self) -> bool:
        """Stop issuing and delete the lease if still ours; True if it was deleted.

        Never raises for Redis errors: an undeleted lease simply expires after its ttl.
        """
        if not self._heartbeat.stop(self._stop_timeout):
            logger.warning(
                "snowflake lease heartbeat did not stop in time",
                extra={"namespace": self._leases.namespace, "timeout_s": self._stop_timeout},
            )
        with self._lock:
            lease = self._lease
            self._status = "closed"
            self._lease = None
            self._invalidate_window()
            mark = self._high_water_locked(self._wall_ns() // NS_PER_MS)
        if lease is None:
            return False
        try:
            deleted = self._leases.release(lease, mark)
        except IdGeneratorUnavailable as error:
            logger.warning(
                "could not release snowflake worker-id lease; it will expire",
                extra={"worker_id": lease.worker_id, "reason": str(error)},
            )
            return False
        logger.info(
            "released snowflake worker id",
            extra={"namespace": lease.namespace, "worker_id": lease.worker_id, "ours": deleted},
        )
        return deleted

    def __enter__(self) -> LeasedSnowflakeGenerator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    @property
    def worker_id(self) -> int | None:
        """The leased worker id, None while no lease is held."""
        lease = self._lease
        return None if lease is None else lease.worker_id

    # -- issuing ---------------------------------------------------------------------------

    def generate(self) -> int:
        lock = self._lock
        lock.acquire()
        try:
            ns = self._wall_ns()
            if self._window_start_ns <= ns < self._window_end_ns:
                sequence = self._sequence + 1
                if sequence <= MAX_SEQUENCE:
                    self._sequence = sequence
                    return self._window_base | sequence
            return self._issue_slow(ns)
        finally:
            lock.release()

    def generate_batch(self, count: int) -> list[int]:
        """`count` ids in increasing order (consecutive integers within one millisecond)."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        ids: list[int] = []
        with self._lock:
            while len(ids) < count:
                ns = self._wall_ns()
                if self._window_start_ns <= ns < self._window_end_ns and (
                    self._sequence < MAX_SEQUENCE
                ):
                    self._sequence += 1
                    first = self._window_base | self._sequence
                else:
                    first = self._issue_slow(ns)
                ids.append(first)
                more = min(count - len(ids), MAX_SEQUENCE - self._sequence)
                if more > 0:
                    ids.extend(range(first + 1, first + 1 + more))
                    self._sequence += more
        return ids

    def _issue_slow(self, ns: int) -> int:
        """A new millisecond, or a refusal, or a wait; `_lock` is held."""
        while True:
            lease = self._lease
            if lease is None:
                raise self._refusal_locked()
            ms = ns // NS_PER_MS
            if ms >= self._deadline_ms or self._monotonic_ns() >= self._deadline_monotonic_ns:
                raise self._expired_locked(lease)
            if ms <= self._floor_ms:
                wait_until_ms = self._floor_ms + 1
                if wait_until_ms - ms > self._max_clock_wait_ms:
                    raise IdGeneratorUnavailable(
                        f"worker id {lease.worker_id} of snowflake namespace "
                        f"{lease.namespace!r} may carry ids of its previous holder up to "
                        f"{_iso_ms(self._floor_ms)}; issuing resumes after that "
                        f"(in {wait_until_ms - ms} ms)"
                    )
            elif ms < self._last_ms:
                wait_until_ms = self._last_ms
                if wait_until_ms - ms > self._max_clock_wait_ms:
                    raise ClockMovedBackwardsError(
                        f"the wall clock moved backwards: it reads {_iso_ms(ms)}, "
                        f"{self._last_ms - ms} ms before the last issued id "
                        f"({_iso_ms(self._last_ms)}); steps back of up to "
                        f"{self._max_clock_wait_ms} ms are waited out, this one is refused "
                        "until the clock catches up"
                    )
            elif ms == self._last_ms:
                if self._sequence < MAX_SEQUENCE:
                    self._open_window(ms)
                    self._sequence += 1
                    return self._window_base | self._sequence
                wait_until_ms = ms + 1
            else:
                offset = ms - LEASED_EPOCH_MS
                if not MIN_OFFSET_MS <= offset <= MAX_OFFSET_MS:
                    raise IdGeneratorUnavailable(
                        f"the wall clock reads {_iso_ms(ms)}, outside the blob layout's "
                        f"range ({_iso_ms(LEASED_EPOCH_MS + MIN_OFFSET_MS)} .. "
                        f"{_iso_ms(LEASED_EPOCH_MS + MAX_OFFSET_MS)})"
                    )
                self._last_ms = ms
                self._sequence = 0
                self._open_window(ms)
                return self._window_base
            self._clocks.sleep((wait_until_ms * NS_PER_MS - ns) / 1e9)
            ns = self._wall_ns()

    def _open_window(self, ms: int) -> None:
        self._window_start_ns = ms * NS_PER_MS
        self._window_end_ns = self._window_start_ns + NS_PER_MS
        self._window_base = (ms - LEASED_EPOCH_MS) << TIMESTAMP_SHIFT | self._worker_bits

    def _invalidate_window(self) -> None:
        self._window_start_ns = 0
        self._window_end_ns = 0

    def _refusal_locked(self) -> IdGeneratorUnavailable:
        namespace = self._leases.namespace
        if self._status == "new":
            return IdGeneratorUnavailable(
                f"the snowflake generator of namespace {namespace!r} has not been started: "
                "call start() or use it as a context manager"
            )
        if self._status == "closed":
            return IdGeneratorUnavailable(
                f"the snowflake generator of namespace {namespace!r} was released; create a new one"
            )
        message = f"{self._lost_reason}; re-acquiring a worker id in the background"
        if self._last_error:
            message += f" (last attempt: {self._last_error})"
        return LeaseLostError(message)

    def _expired_locked(self, lease: WorkerLease) -> LeaseLostError:
        age_s = (self._monotonic_ns() - self._renewed_monotonic_ns) / 1e9
        message = (
            f"the lease on worker id {lease.worker_id} of snowflake namespace "
            f"{lease.namespace!r} may have expired: its last successful renewal started "
            f"{age_s:.2f} s ago (ttl {self._leases.ttl_ms / 1000} s, safety margin "
            f"{self._margin_ms / 1000} s); no ids until a renewal succeeds"
        )
        if self._last_error:
            message += f" (last attempt: {self._last_error})"
        return LeaseLostError(message)

    # -- LeaseListener (called by the heartbeat thread) --------------------------------------

    def high_water_ms(self, now_ms: int) -> int:
        with self._lock:
            return self._high_water_locked(now_ms)

    def _high_water_locked(self, now_ms: int) -> int:
        return max(self._last_ms, self._floor_ms, now_ms)

    def lease_acquired(self, lease: WorkerLease, started: ClockReading) -> None:
        with self._lock:
            if self._status != "running":
                return
            self._lease = lease
            self._lost_reason = None
            self._last_error = None
            self._worker_bits = lease.worker_id << WORKER_ID_SHIFT
            self._floor_ms = lease.floor_ms
            # The first id of a new worker id needs a millisecond after every earlier id.
            self._sequence = MAX_SEQUENCE
            self._set_deadline_locked(started)

    def lease_renewed(self, lease: WorkerLease, started: ClockReading) -> None:
        with self._lock:
            if lease is not self._lease:
                return
            if self._last_error is not None:
                logger.info(
                    "snowflake lease renewal recovered",
                    extra={"namespace": lease.namespace, "worker_id": lease.worker_id},
                )
                self._last_error = None
            self._set_deadline_locked(started)

    def lease_lost(self, lease: WorkerLease, reason: str) -> None:
        with self._lock:
            if lease is not self._lease:
                return
            self._lease = None
            self._lost_reason = reason
            self._invalidate_window()
        logger.warning(
            "lost snowflake worker-id lease; no ids until a new one is acquired",
            extra={"namespace": lease.namespace, "worker_id": lease.worker_id, "reason": reason},
        )

    def lease_unavailable(self, reason: str) -> None:
        with self._lock:
            first_failure = self._last_error is None
            self._last_error = reason
        if first_failure:
            logger.warning(
                "snowflake lease attempt failed; retrying",
                extra={"namespace": self._leases.namespace, "reason": reason},
            )

    def _set_deadline_locked(self, started: ClockReading) -> None:
        validity_ms = self._leases.ttl_ms - self._margin_ms
        self._deadline_ms = started.wall_ms + validity_ms
        self._deadline_monotonic_ns = started.monotonic_ns + validity_ms * NS_PER_MS
        self._renewed_monotonic_ns = started.monotonic_ns
        self._invalidate_window()

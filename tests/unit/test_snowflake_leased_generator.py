"""The leased generator's issuing rules, with an injected clock and an in-memory lease store.

The store's ttl is an hour, so the heartbeat thread never beats during a test; the tests
call the listener methods (`lease_renewed`, `lease_lost`, ...) the heartbeat would call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from harness.waiting import wait_for
from workers.common.snowflake import (
    ClockMovedBackwardsError,
    Clocks,
    IdGeneratorUnavailable,
    LeasedSnowflakeGenerator,
    LeaseLostError,
    NoFreeWorkerId,
    RedisUnavailableError,
    WorkerLease,
    decode_leased_id,
)
from workers.common.snowflake.lease import ClockReading, LeaseHeartbeat

NS_PER_MS = 1_000_000
START_MS = int(datetime(2025, 3, 1, tzinfo=UTC).timestamp() * 1000)
HOUR_MS = 3_600_000


class FakeClock:
    """Wall and monotonic clocks that only move when told to (or when slept on)."""

    def __init__(self) -> None:
        self.wall = START_MS * NS_PER_MS + 250_000
        self.monotonic = 5_000 * NS_PER_MS
        self.sleeps: list[float] = []

    def wall_ns(self) -> int:
        return self.wall

    def monotonic_ns(self) -> int:
        return self.monotonic

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.advance_ns(max(1, round(seconds * 1e9)))

    def advance_ns(self, ns: int) -> None:
        self.wall += ns
        self.monotonic += ns

    def advance_ms(self, ms: int) -> None:
        self.advance_ns(ms * NS_PER_MS)

    @property
    def wall_ms(self) -> int:
        return self.wall // NS_PER_MS

    def clocks(self) -> Clocks:
        return Clocks(wall_ns=self.wall_ns, monotonic_ns=self.monotonic_ns, sleep=self.sleep)

    def reading(self) -> ClockReading:
        return ClockReading(self.wall // NS_PER_MS, self.monotonic)


class FakeLeaseStore:
    """Grants the worker ids queued in `grants`; records releases."""

    def __init__(self, ttl_ms: int = HOUR_MS) -> None:
        self.namespace = "unit"
        self.ttl_ms = ttl_ms
        self.grants: list[tuple[int, int]] = [(7, 0)]
        self.renewals: list[tuple[int, int]] = []
        self.releases: list[tuple[int, int]] = []
        self.renew_results: dict[int, bool | Exception] = {}
        self.acquire_error: Exception | None = None

    def acquire(self, now_ms: int) -> WorkerLease:
        if self.acquire_error is not None:
            raise self.acquire_error
        if not self.grants:
            raise NoFreeWorkerId("no grants left")
        worker_id, floor_ms = self.grants.pop(0)
        return WorkerLease(self.namespace, worker_id, f"token-{worker_id}", floor_ms)

    def renew(self, lease: WorkerLease, high_water_ms: int) -> bool:
        self.renewals.append((lease.worker_id, high_water_ms))
        result = self.renew_results.get(lease.worker_id, True)
        if isinstance(result, Exception):
            raise result
        return result

    def release(self, lease: WorkerLease, high_water_ms: int) -> bool:
        self.releases.append((lease.worker_id, high_water_ms))
        return True


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> FakeLeaseStore:
    return FakeLeaseStore()


@pytest.fixture
def generator(clock: FakeClock, store: FakeLeaseStore) -> Iterator[LeasedSnowflakeGenerator]:
    with LeasedSnowflakeGenerator(store, clocks=clock.clocks()) as started:
        yield started


def _ms(snowflake_id: int) -> int:
    return decode_leased_id(snowflake_id).unix_ms


def test_ids_carry_the_time_worker_id_and_a_sequence(
    generator: LeasedSnowflakeGenerator, clock: FakeClock
) -> None:
    ids = [generator.generate() for _ in range(3)]
    parts = [decode_leased_id(snowflake_id) for snowflake_id in ids]
    assert [p.unix_ms for p in parts] == [clock.wall_ms] * 3
    assert [p.worker_id for p in parts] == [7, 7, 7]
    assert [p.sequence for p in parts] == [0, 1, 2]
    clock.advance_ms(1)
    following = decode_leased_id(generator.generate())
    assert (following.unix_ms, following.sequence) == (clock.wall_ms, 0)


def test_a_spent_millisecond_waits_for_the_next(
    generator: LeasedSnowflakeGenerator, clock: FakeClock
) -> None:
    frozen_ms = clock.wall_ms
    ids = [generator.generate() for _ in range(4096)]
    assert clock.sleeps == []
    assert {_ms(i) for i in ids} == {frozen_ms}
    extra = decode_leased_id(generator.generate())
    assert (extra.unix_ms, extra.sequence) == (frozen_ms + 1, 0)
    assert len(clock.sleeps) == 1
    assert 0 < clock.sleeps[0] <= 0.001
    assert len(set(ids)) == 4096


def test_a_small_step_back_of_the_clock_is_waited_out(
    generator: LeasedSnowflakeGenerator, clock: FakeClock
) -> None:
    first = generator.generate()
    clock.advance_ms(10)
    second = generator.generate()
    clock.wall -= 3 * NS_PER_MS
    third = generator.generate()
    assert clock.sleeps
    assert sum(clock.sleeps) <= 0.0035
    assert first < second < third
    assert _ms(third) >= _ms(second)


def test_a_large_step_back_is_refused_until_the_clock_catches_up(
    generator: LeasedSnowflakeGenerator, clock: FakeClock
) -> None:
    clock.advance_ms(100)
    issued = generator.generate()
    clock.wall -= 50 * NS_PER_MS
    with pytest.raises(ClockMovedBackwardsError, match=r"moved backwards.*50 ms before"):
        generator.generate()
    assert clock.sleeps == []
    clock.advance_ms(50)
    resumed = generator.generate()
    assert resumed > issued


def test_the_step_back_threshold_is_configurable(clock: FakeClock, store: FakeLeaseStore) -> None:
    with LeasedSnowflakeGenerator(store, clocks=clock.clocks(), max_clock_wait_ms=0) as strict:
        clock.advance_ms(5)
        strict.generate()
        clock.wall -= NS_PER_MS
        with pytest.raises(ClockMovedBackwardsError):
            strict.generate()


def test_batches_are_increasing_unique_and_span_milliseconds(
    generator: LeasedSnowflakeGenerator, clock: FakeClock
) -> None:
    single = generator.generate()
    batch = generator.generate_batch(10_000)
    assert len(batch) == 10_000
    assert batch == sorted(batch)
    assert len(set(batch)) == 10_000
    assert single < batch[0]
    assert all(0 <= decode_leased_id(i).sequence <= 4095 for i in batch)
    assert len({_ms(i) for i in batch}) == 3  # 4095 + 4096 + 1809
    assert generator.generate() > batch[-1]
    assert generator.generate_batch(0) == []
    with pytest.raises(ValueError, match="count must be >= 0"):
        generator.generate_batch(-1)


def test_refuses_when_the_lease_deadline_passes_until_a_renewal(
    generator: LeasedSnowflakeGenerator, clock: FakeClock, store: FakeLeaseStore
) -> None:
    generator.generate()
    validity_ms = store.ttl_ms - store.ttl_ms // 5
    clock.advance_ms(validity_ms - 1)
    generator.generate()
    clock.advance_ms(1)
    with pytest.raises(LeaseLostError, match=r"may have expired.*2880\.00 s ago"):
        generator.generate()
    lease = WorkerLease("unit", 7, "token-7", 0)
    generator.lease_renewed(lease, clock.reading())  # not the current lease object: ignored
    with pytest.raises(LeaseLostError):
        generator.generate()


def test_the_monotonic_deadline_holds_even_if_the_wall_clock_stalls(
    clock: FakeClock, store: FakeLeaseStore
) -> None:
    with LeasedSnowflakeGenerator(store, clocks=clock.clocks()) as generator:
        generator.generate()
        clock.monotonic += store.ttl_ms * NS_PER_MS
        clock.wall += NS_PER_MS
        with pytest.raises(LeaseLostError, match="may have expired"):
            generator.generate()


def test_a_renewal_extends_the_deadline(clock: FakeClock) -> None:
    store = FakeLeaseStore()
    generator = LeasedSnowflakeGenerator(store, clocks=clock.clocks())
    leases: list[WorkerLease] = []
    original_acquire = store.acquire

    def remembering_acquire(now_ms: int) -> WorkerLease:
        leases.append(original_acquire(now_ms))
        return leases[-1]

    store.acquire = remembering_acquire  # type: ignore[method-assign]
    with generator:
        clock.advance_ms(store.ttl_ms // 2)
        generator.lease_renewed(leases[0], clock.reading())
        clock.advance_ms(store.ttl_ms // 2)
        assert generator.generate() > 0


def test_a_lost_lease_refuses_at_once_and_a_new_lease_resumes(
    generator: LeasedSnowflakeGenerator, clock: FakeClock
) -> None:
    before = generator.generate_batch(100)
    lease = generator._lease
    assert lease is not None
    generator.lease_lost(lease, "stolen for the test")
    generator.lease_unavailable("Redis said no")
    with pytest.raises(LeaseLostError, match=r"stolen for the test.*last attempt: Redis said no"):
        generator.generate()
    assert generator.worker_id is None
    generator.lease_acquired(WorkerLease("unit", 9, "token-9", 0), clock.reading())
    after = generator.generate_batch(100)
    assert {decode_leased_id(i).worker_id for i in after} == {9}
    assert min(after) > max(before)
    assert len(set(before) | set(after)) == 200


def test_a_previous_holders_floor_is_waited_for_when_close(
    clock: FakeClock, store: FakeLeaseStore
) -> None:
    store.grants = [(3, clock.wall_ms + 2)]
    with LeasedSnowflakeGenerator(store, clocks=clock.clocks()) as generator:
        first = decode_leased_id(generator.generate())
        assert first.unix_ms == clock.wall_ms == START_MS + 3
        assert clock.sleeps


def test_a_previous_holders_floor_far_ahead_is_refused_clearly(
    clock: FakeClock, store: FakeLeaseStore
) -> None:
    store.grants = [(3, clock.wall_ms + 1000)]
    with LeasedSnowflakeGenerator(store, clocks=clock.clocks()) as generator:
        with pytest.raises(IdGeneratorUnavailable, match=r"previous holder.*in 1001 ms"):
            generator.generate()
        clock.advance_ms(1001)
        assert _ms(generator.generate()) == START_MS + 1001


def test_high_water_mark_covers_issued_ids_floor_and_now(
    generator: LeasedSnowflakeGenerator, clock: FakeClock
) -> None:
    clock.advance_ms(3)
    generator.generate()
    assert generator.high_water_ms(START_MS) == START_MS + 3
    assert generator.high_water_ms(START_MS + 10) == START_MS + 10


def test_not_started_and_released_generators_refuse(
    clock: FakeClock, store: FakeLeaseStore
) -> None:
    generator = LeasedSnowflakeGenerator(store, clocks=clock.clocks())
    with pytest.raises(IdGeneratorUnavailable, match="has not been started"):
        generator.generate()
    generator.start()
    issued = generator.generate()
    assert generator.release() is True
    assert store.releases == [(7, _ms(issued))]
    with pytest.raises(IdGeneratorUnavailable, match="was released"):
        generator.generate()
    with pytest.raises(RuntimeError, match="start\\(\\) may be called once"):
        generator.start()


def test_start_reports_an_unreachable_store(clock: FakeClock, store: FakeLeaseStore) -> None:
    store.acquire_error = RedisUnavailableError("Redis is down")
    generator = LeasedSnowflakeGenerator(store, clocks=clock.clocks())
    with pytest.raises(RedisUnavailableError, match="Redis is down"):
        generator.start()
    with pytest.raises(IdGeneratorUnavailable, match="has not been started"):
        generator.generate()


def test_clock_outside_the_layout_range_is_refused(store: FakeLeaseStore) -> None:
    clock = FakeClock()
    clock.wall = int(datetime(2022, 8, 20, tzinfo=UTC).timestamp()) * 10**9
    with (
        LeasedSnowflakeGenerator(store, clocks=clock.clocks()) as generator,
        pytest.raises(IdGeneratorUnavailable, match="outside the blob layout's range"),
    ):
        generator.generate()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"safety_margin": 3600.0}, "safety margin"),
        ({"renew_interval": 3000.0}, "renew interval"),
        ({"retry_interval": 0.0}, "retry interval"),
        ({"max_clock_wait_ms": -1}, "max_clock_wait_ms"),
    ],
)
def test_options_are_validated(
    store: FakeLeaseStore, options: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        LeasedSnowflakeGenerator(store, **options)  # type: ignore[arg-type]


def test_threads_sharing_a_generator_never_get_the_same_id(store: FakeLeaseStore) -> None:
    results: list[list[int]] = [[] for _ in range(4)]
    with LeasedSnowflakeGenerator(store) as generator:

        def work(out: list[int]) -> None:
            for index in range(20_000):
                if index % 100 == 0:
                    out.extend(generator.generate_batch(50))
                else:
                    out.append(generator.generate())

        threads = [threading.Thread(target=work, args=(out,)) for out in results]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    issued = [snowflake_id for out in results for snowflake_id in out]
    assert len(issued) == len(set(issued)) == 4 * (19_800 + 200 * 50)


class RecordingListener:
    def __init__(self) -> None:
        self.events: list[str] = []

    def high_water_ms(self, now_ms: int) -> int:
        return now_ms

    def lease_acquired(self, lease: WorkerLease, started: ClockReading) -> None:
        self.events.append(f"acquired {lease.worker_id}")

    def lease_renewed(self, lease: WorkerLease, started: ClockReading) -> None:
        self.events.append(f"renewed {lease.worker_id}")

    def lease_lost(self, lease: WorkerLease, reason: str) -> None:
        self.events.append(f"lost {lease.worker_id}")

    def lease_unavailable(self, reason: str) -> None:
        self.events.append(f"unavailable: {reason}")


def test_heartbeat_renews_retries_and_reacquires_after_a_loss() -> None:
    store = FakeLeaseStore()
    store.grants = [(4, 0)]
    listener = RecordingListener()
    heartbeat = LeaseHeartbeat(store, listener, Clocks(), renew_interval=0.01, retry_interval=0.01)
    heartbeat.start(WorkerLease("unit", 3, "token-3", 0))
    try:
        wait_for(lambda: "renewed 3" in listener.events, 5, "a renewal")
        store.renew_results[3] = RedisUnavailableError("connection refused")
        wait_for(lambda: "unavailable: connection refused" in listener.events, 5, "a failure")
        store.renew_results[3] = False
        wait_for(lambda: "acquired 4" in listener.events, 5, "a new lease after the loss")
        wait_for(lambda: "renewed 4" in listener.events, 5, "renewals of the new lease")
    finally:
        assert heartbeat.stop(5.0)
    lost_at = listener.events.index("lost 3")
    assert listener.events[lost_at + 1] == "acquired 4"
    assert [worker for worker, _ in store.renewals].count(3) >= 3

"""Leased (blob-layout) generator against the real Redis.

Losing Redis is simulated with `FlakyProxy`, a TCP proxy between the generator and Redis
that the test can stall (bytes are held: the heartbeat's renewal hangs) or cut (connections
are dropped and new ones closed at once), then restore.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
import threading
import time
import uuid
from array import array
from collections.abc import Callable, Iterator

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from harness.waiting import wait_for
from workers.common.net import free_port
from workers.common.settings import Settings
from workers.common.snowflake import (
    IdGeneratorUnavailable,
    LeasedSnowflakeGenerator,
    LeaseLostError,
    NoFreeWorkerId,
    RedisUnavailableError,
    WorkerIdLeases,
    decode_leased_id,
    lease_redis_client,
)

pytestmark = pytest.mark.integration

SHORT_TTL = 1.0


class FlakyProxy:
    """Forwards a local port to Redis; `stall()`, `cut()` and `restore()` break it on demand."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._state = "forward"
        self._changed = threading.Condition()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="flaky-proxy", daemon=True).start()

    def stall(self) -> None:
        with self._changed:
            self._state = "stall"

    def cut(self) -> None:
        with self._changed:
            self._state = "cut"
            self._changed.notify_all()
            doomed, self._sockets = self._sockets, []
        for sock in doomed:
            _close(sock)

    def restore(self) -> None:
        with self._changed:
            self._state = "forward"
            self._changed.notify_all()

    def close(self) -> None:
        self.cut()
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._changed:
                if self._state == "cut":
                    _close(client)
                    continue
            upstream = socket.create_connection(self._target)
            with self._changed:
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                with self._changed:
                    self._changed.wait_for(lambda: self._state != "stall")
                    if self._state == "cut":
                        break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def redis_url() -> str:
    return Settings.from_env().redis_url


@pytest.fixture
def namespace(redis_client: Redis) -> Iterator[str]:
    """A fresh worker-id namespace; its Redis keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    leftovers = list(redis_client.scan_iter(match=f"workers:snowflake:leased:{{{name}}}:*"))
    if leftovers:
        redis_client.delete(*leftovers)


@pytest.fixture
def proxy(redis_client: Redis) -> Iterator[FlakyProxy]:
    kwargs = redis_client.connection_pool.connection_kwargs
    flaky = FlakyProxy((str(kwargs.get("host", "127.0.0.1")), int(kwargs.get("port", 6379))))
    yield flaky
    flaky.close()


def _refusal(generator: LeasedSnowflakeGenerator) -> IdGeneratorUnavailable | None:
    try:
        generator.generate()
    except IdGeneratorUnavailable as error:
        return error
    return None


def _ids_when_available(generator: LeasedSnowflakeGenerator, count: int) -> Callable[[], list[int]]:
    def probe() -> list[int]:
        try:
            return generator.generate_batch(count)
        except IdGeneratorUnavailable:
            return []

    return probe


def _all_unique(*groups: list[int]) -> bool:
    issued = [snowflake_id for group in groups for snowflake_id in group]
    return len(issued) == len(set(issued))


def test_a_lease_is_a_token_key_with_a_ttl_and_release_deletes_it(
    redis_client: Redis, namespace: str
) -> None:
    leases = WorkerIdLeases(redis_client, namespace, ttl=5.0)
    generator = LeasedSnowflakeGenerator(leases).start()
    worker_id = generator.worker_id
    assert worker_id is not None
    ids = [generator.generate() for _ in range(1000)] + generator.generate_batch(10_000)
    assert _all_unique(ids)
    assert {decode_leased_id(i).worker_id for i in ids} == {worker_id}
    assert len(redis_client.get(leases.lease_key(worker_id)) or b"") == 32
    assert 0 < redis_client.pttl(leases.lease_key(worker_id)) <= 5000
    mark = redis_client.hgetall(leases.high_water_key(worker_id))
    assert mark[b"released"] == b"0"
    assert mark[b"ttl_ms"] == b"5000"
    assert redis_client.ttl(leases.high_water_key(worker_id)) > 6 * 24 * 3600

    assert generator.release() is True
    assert redis_client.exists(leases.lease_key(worker_id)) == 0
    mark = redis_client.hgetall(leases.high_water_key(worker_id))
    assert mark[b"released"] == b"1"
    assert int(mark[b"ms"]) >= max(decode_leased_id(i).unix_ms for i in ids)


def test_release_leaves_a_lease_that_is_no_longer_ours(redis_client: Redis, namespace: str) -> None:
    leases = WorkerIdLeases(redis_client, namespace, ttl=5.0)
    generator = LeasedSnowflakeGenerator(leases).start()
    worker_id = generator.worker_id
    assert worker_id is not None
    redis_client.set(leases.lease_key(worker_id), "someone-else", px=5000)
    assert generator.release() is False
    assert redis_client.get(leases.lease_key(worker_id)) == b"someone-else"


def test_every_worker_id_is_leased_once_then_none_is_free(
    redis_client: Redis, namespace: str
) -> None:
    leases = WorkerIdLeases(redis_client, namespace, ttl=30.0)
    now_ms = time.time_ns() // 1_000_000
    granted = [leases.acquire(now_ms).worker_id for _ in range(1024)]
    assert sorted(granted) == list(range(1024))
    with pytest.raises(NoFreeWorkerId, match="all 1024 worker ids of snowflake namespace"):
        leases.acquire(now_ms)


def test_acquisition_prefers_a_worker_id_whose_previous_holder_is_surely_done(
    redis_client: Redis, namespace: str
) -> None:
    leases = WorkerIdLeases(redis_client, namespace, ttl=5.0, worker_ids=range(10, 12))
    now_ms = time.time_ns() // 1_000_000
    redis_client.hset(
        leases.high_water_key(10),
        mapping={"ms": now_ms + 60_000, "ttl_ms": 5000, "released": 0},
    )
    for _ in range(6):
        lease = leases.acquire(now_ms)
        # 11's floor: 0 at first, then the released mark `now_ms` (no ttl added).
        assert lease.worker_id == 11
        assert lease.floor_ms <= now_ms
        assert leases.release(lease, now_ms)


def test_ids_start_after_the_previous_holders_mark(redis_client: Redis, namespace: str) -> None:
    leases = WorkerIdLeases(redis_client, namespace, ttl=5.0, worker_ids=range(7, 8))
    floor_ms = time.time_ns() // 1_000_000 + 700
    # A previous holder that did not release: its ids may reach mark + its ttl.
    redis_client.hset(
        leases.high_water_key(7), mapping={"ms": floor_ms - 200, "ttl_ms": 200, "released": 0}
    )
    with LeasedSnowflakeGenerator(leases) as generator:
        error = _refusal(generator)
        assert "previous holder" in str(error)
        ids = wait_for(_ids_when_available(generator, 100), 5, "ids after the floor", 0.05)
    assert min(decode_leased_id(i).unix_ms for i in ids) > floor_ms


def test_eight_processes_generate_400_000_unique_ids(redis_url: str, namespace: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(8)
    results = context.Queue()
    processes = [
        context.Process(
            target=generate_in_child, args=(redis_url, namespace, 50_000, barrier, results)
        )
        for _ in range(8)
    ]
    for process in processes:
        process.start()
    try:
        chunks = [results.get(timeout=120) for _ in processes]
    finally:
        for process in processes:
            process.join(30)
    assert [process.exitcode for process in processes] == [0] * 8
    per_process = [array("q", chunk) for chunk in chunks]
    ids = [snowflake_id for chunk in per_process for snowflake_id in chunk]
    assert len(ids) == 400_000
    assert len(set(ids)) == 400_000
    worker_ids = [{decode_leased_id(i).worker_id for i in chunk} for chunk in per_process]
    assert all(len(ids_of_one) == 1 for ids_of_one in worker_ids)
    assert len(set.union(*worker_ids)) == 8
    assert all(list(chunk) == sorted(chunk) for chunk in per_process)


def generate_in_child(
    redis_url: str,
    namespace: str,
    count: int,
    barrier: threading.Barrier,
    results: multiprocessing.Queue[bytes],
) -> None:
    client = lease_redis_client(redis_url, ttl=10.0)
    with LeasedSnowflakeGenerator(WorkerIdLeases(client, namespace, ttl=10.0)) as generator:
        barrier.wait(timeout=60)
        ids = [generator.generate() for _ in range(count)]
    client.close()
    results.put(array("q", ids).tobytes())


def test_a_stolen_lease_is_refused_until_a_worker_id_is_free_again(
    redis_client: Redis, namespace: str
) -> None:
    leases = WorkerIdLeases(redis_client, namespace, ttl=SHORT_TTL, worker_ids=range(5, 6))
    with LeasedSnowflakeGenerator(leases) as generator:
        before = generator.generate_batch(5000)
        redis_client.set(leases.lease_key(5), "thief", px=60_000)
        error = wait_for(lambda: _refusal(generator), 5, "the refusal after the theft", 0.01)
        assert isinstance(error, LeaseLostError)
        assert "worker id 5 " in str(error)
        assert "held by someone else" in str(error)
        wait_for(lambda: "all 1 worker ids" in str(_refusal(generator)), 5, "a failed re-lease")
        redis_client.delete(leases.lease_key(5))
        after = wait_for(_ids_when_available(generator, 5000), 5, "ids after re-leasing", 0.01)
        assert generator.worker_id == 5
    assert _all_unique(before, after)
    assert min(after) > max(before)


def test_a_stolen_lease_is_replaced_by_another_worker_id(
    redis_client: Redis, namespace: str
) -> None:
    leases = WorkerIdLeases(redis_client, namespace, ttl=SHORT_TTL)
    with LeasedSnowflakeGenerator(leases) as generator:
        before = generator.generate_batch(5000)
        stolen = generator.worker_id
        assert stolen is not None
        redis_client.set(leases.lease_key(stolen), "thief", px=60_000)
        wait_for(lambda: generator.worker_id not in (None, stolen), 5, "a new worker id", 0.01)
        after = wait_for(_ids_when_available(generator, 5000), 5, "ids after re-leasing", 0.01)
    assert {decode_leased_id(i).worker_id for i in after} == {_worker_of(after[0])}
    assert _worker_of(after[0]) != stolen
    assert _all_unique(before, after)
    assert redis_client.get(leases.lease_key(stolen)) == b"thief"


def _worker_of(snowflake_id: int) -> int:
    return decode_leased_id(snowflake_id).worker_id


def test_a_blocked_heartbeat_lets_the_lease_expire_and_a_new_holder_stays_apart(
    redis_client: Redis, namespace: str, proxy: FlakyProxy
) -> None:
    slow: Redis = Redis(port=proxy.port, socket_timeout=60)  # renewals hang
    generator = LeasedSnowflakeGenerator(WorkerIdLeases(slow, namespace, ttl=SHORT_TTL)).start()
    try:
        before = generator.generate_batch(5000)
        first = generator.worker_id
        assert first is not None
        proxy.stall()
        error = wait_for(lambda: _refusal(generator), 5, "the refusal at the deadline", 0.01)
        assert isinstance(error, LeaseLostError)
        assert "may have expired" in str(error)
        lease_key = WorkerIdLeases(redis_client, namespace).lease_key(first)
        wait_for(lambda: redis_client.exists(lease_key) == 0, 5, "the lease to expire", 0.02)
        assert _refusal(generator) is not None

        # Another generator takes the very same worker id.
        thief_leases = WorkerIdLeases(
            redis_client, namespace, ttl=SHORT_TTL, worker_ids=range(first, first + 1)
        )
        with LeasedSnowflakeGenerator(thief_leases) as thief:
            assert thief.worker_id == first
            stolen = wait_for(_ids_when_available(thief, 5000), 5, "the thief's ids", 0.01)
            proxy.restore()
            after = wait_for(_ids_when_available(generator, 5000), 5, "recovery", 0.01)
            assert generator.worker_id not in (None, first)
    finally:
        proxy.restore()
        generator.release()
        slow.close()
    assert _all_unique(before, stolen, after)
    assert min(decode_leased_id(i).unix_ms for i in stolen) > max(
        decode_leased_id(i).unix_ms for i in before
    )


def test_losing_redis_after_acquisition_refuses_then_recovers(
    namespace: str, proxy: FlakyProxy
) -> None:
    client: Redis = Redis(
        port=proxy.port,
        socket_timeout=0.2,
        socket_connect_timeout=0.2,
        retry=Retry(NoBackoff(), retries=0),
    )
    generator = LeasedSnowflakeGenerator(WorkerIdLeases(client, namespace, ttl=SHORT_TTL))
    try:
        generator.start()
        before = generator.generate_batch(5000)
        proxy.cut()

        def refused_naming_redis() -> IdGeneratorUnavailable | None:
            error = _refusal(generator)
            return error if error is not None and "Redis error" in str(error) else None

        error = wait_for(refused_naming_redis, 5, "a refusal naming Redis", 0.01)
        assert isinstance(error, LeaseLostError)
        assert "ConnectionError" in str(error)
        assert _refusal(generator) is not None
        proxy.restore()
        after = wait_for(_ids_when_available(generator, 5000), 10, "recovery", 0.02)
    finally:
        proxy.restore()
        generator.release()
        client.close()
    assert _all_unique(before, after)


def test_redis_unreachable_at_start_is_a_clear_error_and_no_id(namespace: str) -> None:
    dead: Redis = Redis(
        port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), retries=0)
    )
    generator = LeasedSnowflakeGenerator(WorkerIdLeases(dead, namespace))
    with pytest.raises(RedisUnavailableError) as error:
        generator.start()
    message = str(error.value)
    assert f"worker-id lease acquisition in snowflake namespace {namespace!r} failed" in message
    assert "Redis error (ConnectionError" in message
    with pytest.raises(IdGeneratorUnavailable, match="has not been started"):
        generator.generate()

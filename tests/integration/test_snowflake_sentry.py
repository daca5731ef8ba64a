"""Sentry-layout generator against the real Redis: borrowing, exhaustion, TTL, round trips."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from workers.common.net import free_port
from workers.common.settings import Settings
from workers.common.snowflake import (
    IdGeneratorUnavailable,
    InvalidSnowflakeId,
    NoAvailableId,
    RedisUnavailableError,
    SentrySnowflakeGenerator,
    decode_sentry_id,
)
from workers.common.snowflake.sentry_layout import SENTRY_EPOCH_SECONDS

pytestmark = pytest.mark.integration

NEW_YEAR_2024 = float(datetime(2024, 1, 1, tzinfo=UTC).timestamp())
T = int(NEW_YEAR_2024) - SENTRY_EPOCH_SECONDS


@pytest.fixture
def key(redis_client: Redis) -> Iterator[str]:
    """A fresh counter key; its Redis keys are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    leftovers = list(redis_client.scan_iter(match=f"workers:snowflake:sentry:{{{name}:*"))
    if leftovers:
        redis_client.delete(*leftovers)


def frozen(at: float = NEW_YEAR_2024) -> Any:
    return lambda: at


def test_sixteen_ids_per_second_then_the_previous_second_is_borrowed(
    redis_client: Redis, key: str
) -> None:
    generator = SentrySnowflakeGenerator(
        redis_client, key, region=1, clock=frozen(NEW_YEAR_2024 + 0.7)
    )
    ids = [generator.generate() for _ in range(17)]
    parts = [decode_sentry_id(snowflake_id) for snowflake_id in ids]
    new_year = datetime(2024, 1, 1, tzinfo=UTC)
    assert [p.timestamp for p in parts[:16]] == [new_year] * 16
    assert [p.sequence for p in parts[:16]] == list(range(16))
    assert parts[16].timestamp == datetime(2023, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert parts[16].sequence == 0
    assert {p.region for p in parts} == {1}
    assert len(set(ids)) == 17
    assert ids[0] == 4506493067984912  # the test vector's second, region 1, sequence 0


def test_an_id_does_not_carry_its_key_so_one_table_needs_one_key(
    redis_client: Redis, key: str
) -> None:
    # Why every writer of a table must share its key and region: a second key hands out the
    # very same ids (this is how a test with its own key once collided with the CLI's rows).
    other = f"{key}-other"
    try:
        first = SentrySnowflakeGenerator(redis_client, key, region=2, clock=frozen())
        second = SentrySnowflakeGenerator(redis_client, other, region=2, clock=frozen())
        assert [first.generate() for _ in range(5)] == [second.generate() for _ in range(5)]
    finally:
        leftovers = list(redis_client.scan_iter(match=f"workers:snowflake:sentry:{{{other}:*"))
        if leftovers:
            redis_client.delete(*leftovers)


def test_the_script_sets_the_ttl_on_the_first_incr_only(redis_client: Redis, key: str) -> None:
    generator = SentrySnowflakeGenerator(redis_client, key, region=0, clock=frozen())
    counter = generator.counter_key(T)
    assert counter == f"workers:snowflake:sentry:{{{key}:0}}:{T}"
    assert redis_client.exists(counter) == 0
    generator.generate()
    assert 295 <= redis_client.ttl(counter) <= 300
    redis_client.expire(counter, 1000)
    generator.generate()
    assert redis_client.ttl(counter) > 300
    assert int(redis_client.get(counter) or 0) == 2


def test_borrowed_seconds_get_a_ttl_too(redis_client: Redis, key: str) -> None:
    generator = SentrySnowflakeGenerator(redis_client, key, region=0, clock=frozen())
    redis_client.set(generator.counter_key(T), 16, ex=300)
    decoded = decode_sentry_id(generator.generate())
    assert decoded.unix_seconds == int(NEW_YEAR_2024) - 1
    assert 295 <= redis_client.ttl(generator.counter_key(T - 1)) <= 300


def test_all_300_seconds_spent_raises_no_available_id(redis_client: Redis, key: str) -> None:
    generator = SentrySnowflakeGenerator(redis_client, key, region=3, clock=frozen())
    ids = [generator.generate() for _ in range(16 * 300)]
    assert len(set(ids)) == 4800
    seconds = {decode_sentry_id(snowflake_id).unix_seconds for snowflake_id in ids}
    assert seconds == set(range(int(NEW_YEAR_2024) - 299, int(NEW_YEAR_2024) + 1))
    with pytest.raises(NoAvailableId, match=r"no available ID .* region 3: all 16 sequence"):
        generator.generate()
    # Nothing older than 300 seconds was touched.
    assert redis_client.exists(generator.counter_key(T - 300)) == 0


def test_probing_spent_seconds_costs_one_round_trip(redis_client: Redis, key: str) -> None:
    commands: list[str] = []

    class CountingRedis(Redis):
        def execute_command(self, *args: Any, **options: Any) -> Any:
            commands.append(str(args[0]))
            return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    counting = CountingRedis.from_url(Settings.from_env().redis_url)
    try:
        generator = SentrySnowflakeGenerator(counting, key, region=0, clock=frozen())
        generator.generate()  # loads the script (EVALSHA, SCRIPT LOAD, EVALSHA at most)
        with redis_client.pipeline() as pipeline:
            for second in range(T - 120, T + 1):
                pipeline.set(generator.counter_key(second), 16, ex=300)
            pipeline.execute()
        commands.clear()
        decoded = decode_sentry_id(generator.generate())
    finally:
        counting.close()
    assert commands == ["EVALSHA"]
    assert decoded.unix_seconds == int(NEW_YEAR_2024) - 121


def test_concurrent_callers_never_share_an_id(redis_client: Redis, key: str) -> None:
    generator = SentrySnowflakeGenerator(redis_client, key, region=4095)
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(lambda _: generator.generate(), range(400)))
    assert len(set(ids)) == 400
    assert {decode_sentry_id(snowflake_id).region for snowflake_id in ids} == {4095}


def test_redis_down_is_a_clear_error() -> None:
    dead: Redis = Redis(
        port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), retries=0)
    )
    generator = SentrySnowflakeGenerator(dead, "test-dead", region=0)
    with pytest.raises(RedisUnavailableError, match=r"Redis failed \(ConnectionError: "):
        generator.generate()


def test_clock_before_the_epoch_is_refused(redis_client: Redis, key: str) -> None:
    generator = SentrySnowflakeGenerator(redis_client, key, 0, clock=frozen(1_600_000_000.0))
    with pytest.raises(IdGeneratorUnavailable, match="outside the Sentry layout's range"):
        generator.generate()


def test_region_and_key_are_validated(redis_client: Redis) -> None:
    with pytest.raises(InvalidSnowflakeId, match=r"region must be an integer 0\.\.4095, got 4096"):
        SentrySnowflakeGenerator(redis_client, "ok", region=4096)
    with pytest.raises(ValueError, match="snowflake key 'a b' must be 1 to 100 characters"):
        SentrySnowflakeGenerator(redis_client, "a b", region=0)

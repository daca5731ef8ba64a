"""Snowflake id throughput against the real local Redis, both layouts side by side in one run.

1. Sentry layout, fresh key: the burst (ids until `NoAvailableId`: 16 x the 300 probed
   seconds, plus any second that ticks over meanwhile), then the sustained rate over a few
   seconds, which the design caps at 16 ids per second per region;
2. leased (blob) layout: single `generate()` calls, then `generate_batch()` calls, each for
   a fixed time, from one process.

Prints a table and, as the last line, one JSON object with the figures.
Usage: `python -m bench.ids [--seconds S] [--sustain-seconds S]` (needs `workers stack up`).
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

from redis import Redis

from bench import report
from workers.common.settings import Settings
from workers.common.snowflake import (
    LeasedSnowflakeGenerator,
    NoAvailableId,
    SentrySnowflakeGenerator,
    WorkerIdLeases,
    lease_redis_client,
)

BATCH_SIZE = 4096


def sentry_burst(generator: SentrySnowflakeGenerator) -> tuple[int, float]:
    """Ids until the key is spent, and the seconds that took."""
    issued = 0
    started = time.perf_counter()
    while True:
        try:
            generator.generate()
        except NoAvailableId:
            return issued, time.perf_counter() - started
        issued += 1


def sentry_sustained(generator: SentrySnowflakeGenerator, seconds: int) -> tuple[int, float]:
    """Ids over `seconds` whole seconds after the burst: each new second frees 16."""
    _sleep_to_next_second()
    issued = 0
    started = time.perf_counter()
    for _ in range(seconds):
        while True:
            try:
                generator.generate()
            except NoAvailableId:
                break
            issued += 1
        _sleep_to_next_second()
    return issued, time.perf_counter() - started


def _sleep_to_next_second() -> None:
    # Nothing is free until the wall clock reaches the next second: wait for it.
    time.sleep(1.0 - time.time() % 1.0 + 0.001)


def batch_ids(generator: LeasedSnowflakeGenerator, seconds: float) -> tuple[int, float]:
    issued = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(10):
            issued += len(generator.generate_batch(BATCH_SIZE))
        now = time.perf_counter()
        if now >= deadline:
            return issued, now - started


def single_ids(generator: LeasedSnowflakeGenerator, seconds: float) -> tuple[int, float]:
    generate = generator.generate
    issued = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(10_000):
            generate()
        issued += 10_000
        now = time.perf_counter()
        if now >= deadline:
            return issued, now - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per leased-layout run")
    parser.add_argument("--sustain-seconds", type=int, default=3)
    arguments = parser.parse_args()
    settings = Settings.from_env()
    tag = f"bench-{uuid.uuid4().hex[:8]}"

    client: Redis = Redis.from_url(settings.redis_url)
    sentry = SentrySnowflakeGenerator(client, tag, settings.snowflake_region)
    burst, burst_s = sentry_burst(sentry)
    sustained, sustained_s = sentry_sustained(sentry, arguments.sustain_seconds)
    client.delete(*client.scan_iter(match=f"workers:snowflake:sentry:{{{tag}:*"))
    client.close()

    lease_client = lease_redis_client(settings.redis_url)
    with LeasedSnowflakeGenerator(WorkerIdLeases(lease_client, tag)) as leased:
        single, single_s = single_ids(leased, arguments.seconds)
        batched, batched_s = batch_ids(leased, arguments.seconds)
    lease_client.delete(*lease_client.scan_iter(match=f"workers:snowflake:leased:{{{tag}}}:*"))
    lease_client.close()

    figures: dict[str, Any] = {
        "sentry_burst_ids": burst,
        "sentry_burst_ids_per_second": round(burst / burst_s),
        "sentry_sustained_ids": sustained,
        "sentry_sustained_seconds": round(sustained_s, 2),
        "sentry_sustained_ids_per_second": round(sustained / sustained_s, 1),
        "leased_single_ids": single,
        "leased_single_ids_per_second": round(single / single_s),
        "leased_batch_ids": batched,
        "leased_batch_ids_per_second": round(batched / batched_s),
        "leased_batch_size": BATCH_SIZE,
    }
    rows = [
        ("sentry, burst from a fresh key", burst, burst_s),
        ("sentry, sustained after the burst", sustained, sustained_s),
        ("leased, generate()", single, single_s),
        (f"leased, generate_batch({BATCH_SIZE})", batched, batched_s),
    ]
    report.print_table(
        ["generator", "ids", "seconds", "ids/s"],
        [[name, f"{n:,}", f"{sec:.2f}", f"{n / sec:,.0f}"] for name, n, sec in rows],
    )
    report.print_figures(figures)


if __name__ == "__main__":
    main()

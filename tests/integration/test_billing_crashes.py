"""Billing under faults, per processing guarantee, against the real stack with real processes.

Each test streams usage buckets at a steady rate (one bucket per project id, so an outcome
names the bucket it bills) and a few invalid messages, breaks something mid-stream, and then
reads the outcomes and DLQ copies with `read_committed`:
- exactly-once: every bucket billed once, every invalid message dead-lettered once;
- at-least-once: every bucket billed, duplicates counted and reported (never asserted zero).
The figures are printed and recorded as test properties (`duplicates`, `recovery_seconds`).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from harness.billing import usage_bucket
from harness.kafka import make_topics, unique_name
from harness.paced import PacedProducer
from harness.waiting import wait_for
from harness.worker_process import ROOT, Supervised, WorkerProcess
from tests.support.billing import (
    PARTITIONS,
    Topics,
    billing_worker,
    counter,
    decoded,
)
from tests.support.kafka import read_available, wait_until_committed
from workers.billing.counting import SPANS_USAGE_METRIC_ID, TRANSACTIONS_USAGE_METRIC_ID
from workers.billing.definition import AT_LEAST_ONCE, DLQ_TOPIC, EXACTLY_ONCE
from workers.common.kafka_offsets import committed_offsets, fully_committed, total
from workers.common.settings import Settings
from workers.stack import services

pytestmark = pytest.mark.integration

GUARANTEES = (EXACTLY_ONCE, AT_LEAST_ONCE)
INVALID_EVERY = 997
#: Messages produced at once before the live stream starts.
HEAD = 2_000


@pytest.fixture(scope="module")
def stack() -> Settings:
    return Settings.from_env()


@pytest.fixture
def topics(stack: Settings) -> Topics:
    names = Topics(unique_name("billing-crash-in"), unique_name("billing-crash-out"))
    make_topics(stack, names.input, names.outcomes, DLQ_TOPIC, partitions=PARTITIONS)
    return names


@dataclass
class Stream:
    """The input of one test: which buckets bill and which messages are invalid."""

    values: list[bytes]
    billable: set[int]
    invalid: int

    def first(self, produced: int) -> Stream:
        """The part of the stream a stopped producer got out: its first `produced` messages."""
        return Stream(
            self.values[:produced],
            {index for index in self.billable if index < produced},
            sum(1 for index in range(produced) if index % INVALID_EVERY == 5),
        )


def stream_of(count: int, seed: int) -> Stream:
    rng = random.Random(seed)
    values: list[bytes] = []
    billable: set[int] = set()
    invalid = 0
    for index in range(count):
        if index % INVALID_EVERY == 5:
            values.append(b'{"not": "a bucket", "n": %d}' % index)
            invalid += 1
            continue
        metric = rng.choice((TRANSACTIONS_USAGE_METRIC_ID, SPANS_USAGE_METRIC_ID))
        values.append(usage_bucket(metric, float(rng.randint(1, 9)), 77, index))
        billable.add(index)
    return Stream(values, billable, invalid)


@dataclass
class Billed:
    outcomes: int
    duplicates: int
    dead_letters: int
    duplicate_dead_letters: int


#: The DLQ topic is shared with every other billing test, and a transaction left open on it
#: (by an exactly-once worker of another test, until its 60 s timeout, or a partition whose
#: leader is still moving after a broker restart) can hold `read_committed` readers before it:
#: copies are waited for, not read once.
DLQ_COPIES_SECONDS = 150.0


def dlq_copies(stack: Settings, topics: Topics) -> Counter[tuple[bytes, bytes]]:
    """The DLQ copies of this test's input, by original partition and offset."""
    return Counter(
        (r.headers["original_partition"], r.headers["original_offset"])
        for r in read_available(stack, DLQ_TOPIC, timeout=60)
        if r.headers.get("original_topic") == topics.input.encode()
    )


def billed(stack: Settings, topics: Topics, stream: Stream) -> Billed:
    """What the worker committed, checked for loss (never allowed, in either guarantee)."""
    outcomes = decoded(read_available(stack, topics.outcomes, timeout=60))
    per_bucket = Counter(o["project_id"] for o in outcomes)
    assert set(per_bucket) == stream.billable, "a billable bucket has no outcome"

    def every_copy() -> Counter[tuple[bytes, bytes]] | None:
        found = dlq_copies(stack, topics)
        return found if len(found) >= stream.invalid else None

    letters = wait_for(every_copy, DLQ_COPIES_SECONDS, "a DLQ copy of every invalid message")
    assert len(letters) == stream.invalid, "an invalid message has no DLQ copy"
    return Billed(
        outcomes=len(outcomes),
        duplicates=len(outcomes) - len(per_bucket),
        dead_letters=sum(letters.values()),
        duplicate_dead_letters=sum(letters.values()) - len(letters),
    )


def check(guarantee: str, result: Billed, record_property: Any, fault: str) -> None:
    record_property("duplicates", result.duplicates)
    print(
        f"\n{fault} [{guarantee}]: {result.outcomes} outcomes, {result.duplicates} duplicated; "
        f"{result.dead_letters} DLQ copies, {result.duplicate_dead_letters} duplicated"
    )
    if guarantee == EXACTLY_ONCE:
        assert result.duplicates == 0, "exactly-once billed a bucket twice"
        assert result.duplicate_dead_letters == 0, "exactly-once dead-lettered a message twice"


def committed_total(stack: Settings, topics: Topics, group: str) -> int:
    return total(committed_offsets(stack, group, topics.input))


def start_stream(stack: Settings, topics: Topics, stream: Stream, head: int) -> PacedProducer:
    """Produce `head` messages at once, the rest at 5,000 a second in the background."""
    paced = PacedProducer(stack, topics.input, stream.values[:head], per_second=1_000_000)
    paced.run()
    live = PacedProducer(stack, topics.input, stream.values[head:], per_second=5_000)
    live.start()
    return live


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_worker_killed_three_times_mid_stream(
    stack: Settings, topics: Topics, guarantee: str, record_property: Any
) -> None:
    # Longer than the test needs (stopped after the third recovery), so every kill lands
    # mid-stream however slowly the restarts go.
    stream = stream_of(150_000, seed=11)
    group = topics.group()

    def start() -> WorkerProcess:
        # Static membership: the restarted member takes over the dead one's partitions at once
        # (and keeps its transactional id, so it aborts what the dead one left open).
        return billing_worker(
            topics.input, topics.outcomes, group,
            "--group-instance-id", "billing-0", "--processing-guarantee", guarantee,
        )  # fmt: skip

    worker = start()
    live = start_stream(stack, topics, stream, head=HEAD)
    recoveries: list[float] = []
    try:
        for kill in range(3):
            before = committed_total(stack, topics, group)
            # Kill only once this incarnation has committed something of its own.
            wait_for(
                lambda before=before: committed_total(stack, topics, group) > before,  # type: ignore[misc]
                60,
                f"progress before kill {kill + 1}",
                interval=0.05,
            )
            assert live.is_alive(), "killed too late: the stream had ended"
            worker.stop(signal.SIGKILL)
            at_kill = committed_total(stack, topics, group)
            restarted = time.monotonic()
            worker = start()
            wait_for(
                lambda at_kill=at_kill: committed_total(stack, topics, group) > at_kill,  # type: ignore[misc]
                60,
                f"the restarted worker's first commit after kill {kill + 1}",
                interval=0.05,
            )
            recoveries.append(time.monotonic() - restarted)
        live.stop()
        live.join()
        assert live.failures == []
        wait_until_committed(stack, group, topics.input, timeout=90)
    finally:
        assert worker.stop() == 0
    record_property("recovery_seconds", recoveries)
    print(f"\nrecovery after each kill: {', '.join(f'{s:.1f} s' for s in recoveries)}")
    produced = stream.first(live.produced + HEAD)
    check(guarantee, billed(stack, topics, produced), record_property, "worker kill -9 x3")


def _kafka_pid(stack: Settings) -> int:
    kafka = next(service for service in services(stack) if service.name == "kafka")
    pid = kafka.own_pid()
    assert isinstance(pid, int), "the local Kafka is not running"
    return pid


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie until its parent reaps it: gone for Kafka's purposes once it is not running.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1].startswith("Z")


def stack_up() -> None:
    subprocess.run(
        [sys.executable, "-m", "workers", "stack", "up"], cwd=ROOT, check=True, timeout=300
    )


@pytest.fixture
def broker_restored() -> Iterator[Callable[[], None]]:
    """Whatever a test does to the broker, the stack is up again after it."""
    yield stack_up
    stack_up()


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_broker_killed_mid_stream_and_restarted(
    stack: Settings,
    topics: Topics,
    guarantee: str,
    record_property: Any,
    broker_restored: Callable[[], None],
) -> None:
    stream = stream_of(30_000, seed=12)
    group = topics.group()
    supervised = Supervised(
        lambda: billing_worker(
            topics.input, topics.outcomes, group, "--processing-guarantee", guarantee
        )
    )
    try:
        live = start_stream(stack, topics, stream, head=HEAD)
        wait_for(
            lambda: committed_total(stack, topics, group) > 1_000,
            60,
            "the worker's first commits",
            interval=0.05,
        )
        assert live.is_alive(), "killed too late: the stream had ended"
        at_kill = committed_total(stack, topics, group)
        pid = _kafka_pid(stack)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: _pid_gone(pid), 30, "the broker to die")
        killed = time.monotonic()
        broker_restored()

        def committed_again() -> bool:
            supervised.check()
            return committed_total(stack, topics, group) > at_kill

        wait_for(committed_again, 120, "commits after the broker restart", interval=0.2)
        recovery = time.monotonic() - killed
        live.join()
        assert live.failures == []

        def all_committed() -> bool:
            supervised.check()
            return fully_committed(stack, group, topics.input)

        wait_for(all_committed, 120, "the group to commit everything", interval=0.2)
    finally:
        assert supervised.worker.stop() == 0
    # A worker may give up during the outage, but only by exiting non-zero (its pod restarts).
    assert all(code != 0 for code in supervised.exit_codes), supervised.exit_codes
    record_property("recovery_seconds", recovery)
    record_property("worker_exit_codes", supervised.exit_codes)
    print(
        f"\nbroker kill -9: commits again {recovery:.1f} s after the kill; worker exits during "
        f"the outage: {supervised.exit_codes or 'none'}"
    )
    check(guarantee, billed(stack, topics, stream), record_property, "broker kill -9")


def test_exactly_once_rebalance_under_load_neither_loses_nor_doubles(
    stack: Settings, topics: Topics, record_property: Any
) -> None:
    # Longer than the test needs: stopped once the second worker has left, so both members
    # always have live traffic to commit while the group rebalances.
    stream = stream_of(150_000, seed=13)
    group = topics.group()
    first = billing_worker(topics.input, topics.outcomes, group)
    second: WorkerProcess | None = None
    try:
        live = start_stream(stack, topics, stream, head=HEAD)
        wait_for(lambda: committed_total(stack, topics, group) > 1_000, 60, "first commits", 0.05)
        second = WorkerProcess(
            "billing", "--topic", topics.input, "--consumer-group", group,
            "--outcomes-topic", topics.outcomes, log_name=f"billing-{group}-second",
        )  # fmt: skip
        joined = second
        wait_for(
            lambda: counter(joined, "workers_billing_transactions_committed_total", "") > 0,
            60,
            "the second worker to commit its own transactions",
            interval=0.1,
        )
        assert live.is_alive(), "rebalanced too late: the stream had ended"
        committed_before_leave = counter(first, "workers_billing_transactions_committed_total", "")
        assert second.stop() == 0  # a graceful leave: the partitions move back
        second = None
        wait_for(
            lambda: (
                counter(first, "workers_billing_transactions_committed_total", "")
                > committed_before_leave
            ),
            60,
            "the first worker to commit after the leave",
            interval=0.1,
        )
        live.stop()
        live.join()
        assert live.failures == []
        wait_until_committed(stack, group, topics.input, timeout=90)
    finally:
        if second is not None:
            second.stop()
        assert first.stop() == 0
    produced = stream.first(live.produced + HEAD)
    check(EXACTLY_ONCE, billed(stack, topics, produced), record_property, "rebalance")


def test_a_fenced_producer_never_commits_again_and_exits_non_zero(
    stack: Settings, topics: Topics
) -> None:
    """Two processes with one transactional id: the older is fenced by the newer.

    They read in two groups, so both always have work to commit; the older group's offsets
    must not move once the newer process has committed a transaction of its own (its
    `init_transactions` came before that), and the older process must exit non-zero.
    """
    # Longer than the test needs (stopped once the older process is gone): the older
    # process must still have transactions to begin when the newer one takes its id.
    stream = stream_of(150_000, seed=14)
    shared = ("--transactional-id", f"fenced-{topics.input}")
    older_group, newer_group = topics.group("-a"), topics.group("-b")
    older = billing_worker(topics.input, topics.outcomes, older_group, *shared)
    newer: WorkerProcess | None = None
    try:
        live = start_stream(stack, topics, stream, head=HEAD)
        wait_for(
            lambda: counter(older, "workers_billing_transactions_committed_total", "") > 0,
            60,
            "the older process to commit",
            interval=0.05,
        )
        newer = WorkerProcess(
            "billing", "--topic", topics.input, "--consumer-group", newer_group,
            "--outcomes-topic", topics.outcomes, *shared, log_name=f"billing-{newer_group}",
        )  # fmt: skip
        started = newer
        wait_for(
            lambda: counter(started, "workers_billing_transactions_committed_total", "") > 0,
            60,
            "the newer process to commit",
            interval=0.05,
        )
        committed_by_older = committed_total(stack, topics, older_group)
        assert older.process.wait(60) != 0, "the fenced process must exit non-zero"
        live.stop()
        live.join()
        wait_until_committed(stack, newer_group, topics.input, timeout=90)
        assert committed_total(stack, topics, older_group) == committed_by_older
        assert committed_by_older < live.produced + HEAD, "fenced too late: nothing left"
    finally:
        if newer is not None:
            assert newer.stop() == 0
        if older.process.poll() is None:
            older.stop(signal.SIGKILL)


#: Shorter than the classic protocol's 45 s session timeout: a survivor that waited for it fails.
TAKEOVER_SECONDS = 30.0


@pytest.mark.parametrize("guarantee", GUARANTEES)
def test_a_member_killed_for_good_hands_its_partitions_to_the_survivor(
    stack: Settings, topics: Topics, guarantee: str, record_property: Any
) -> None:
    # Longer than the test needs: stopped once the survivor has taken over.
    stream = stream_of(150_000, seed=15)
    group = topics.group()
    args = ("--processing-guarantee", guarantee)
    survivor = billing_worker(topics.input, topics.outcomes, group, *args)
    doomed = WorkerProcess(
        "billing", "--topic", topics.input, "--consumer-group", group,
        "--outcomes-topic", topics.outcomes, *args, log_name=f"billing-{group}-doomed",
    )  # fmt: skip
    try:
        live = start_stream(stack, topics, stream, head=HEAD)
        wait_for(
            lambda: counter(doomed, "arroyo_consumer_partitions_assigned_total", "") > 0,
            60,
            "the second member to get partitions",
            interval=0.1,
        )
        before = committed_offsets(stack, group, topics.input)
        wait_for(
            lambda: all(
                committed_offsets(stack, group, topics.input).get(p, -1) > before.get(p, -1)
                for p in range(PARTITIONS)
            ),
            60,
            "both members to commit on every partition",
            interval=0.1,
        )
        assert live.is_alive(), "killed too late: the stream had ended"
        doomed.stop(signal.SIGKILL)
        at_kill = committed_offsets(stack, group, topics.input)
        wait_for(
            lambda: all(
                committed_offsets(stack, group, topics.input)[p] > at_kill[p]
                for p in range(PARTITIONS)
            ),
            TAKEOVER_SECONDS,
            "the survivor to commit on the dead member's partitions",
            interval=0.1,
        )
        assert live.is_alive(), "took over too late: the stream had ended"
        live.stop()
        live.join()
        assert live.failures == []
        wait_until_committed(stack, group, topics.input, timeout=90)
    finally:
        assert survivor.stop() == 0
    produced = stream.first(live.produced + HEAD)
    check(guarantee, billed(stack, topics, produced), record_property, "member kill -9")

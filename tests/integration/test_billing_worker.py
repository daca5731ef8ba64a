"""The billing worker (`workers run billing`) against the real Kafka, PostgreSQL and Redis.

Every test runs the production CLI in a subprocess on its own input topic, consumer group and
outcomes topic. Outcome-level checks identify an outcome by its (org, project, category):
where a test needs to know which input bucket an outcome came from, every billable bucket
gets its own project id.

The broker outage is simulated honestly without stopping the shared broker: the worker
produces to an outcomes topic that does not exist yet (the stack's broker has
`auto.create.topics.enable=false`). librdkafka holds the outcomes (and then reports them
unknown, which the worker retries with backoff), no offset may be committed, the in-flight
budget fills up and the consumer is backpressured; once the test creates the topic the
outcomes are delivered and everything is committed, with nothing lost.
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from redis import Redis
from sentry_kafka_schemas import iter_examples

from harness.billing import custom_bucket, usage_bucket
from harness.kafka import make_topics, unique_name
from harness.paced import PacedProducer
from harness.waiting import wait_for
from harness.worker_process import WorkerProcess
from tests.support.billing import (
    PARTITIONS,
    Topics,
    billing_worker,
    counter,
    decoded,
    gauge,
)
from tests.support.billing_fakes import expected_outcome
from tests.support.kafka import Record, produce, read_all, read_available, wait_until_committed
from workers.billing.counting import (
    SPANS_USAGE_METRIC_ID,
    TRANSACTIONS_USAGE_METRIC_ID,
)
from workers.billing.definition import DLQ_TOPIC
from workers.billing.flags import FIRST_CUSTOM_METRIC_EVENT, flag_cache_key
from workers.billing.traffic import sample_traffic
from workers.common.kafka_offsets import committed_offsets, total
from workers.common.projects import HAS_CUSTOM_METRICS_FLAG, create_organization
from workers.common.settings import Settings
from workers.demo.billing import flagged_projects, outcome_totals

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack() -> Settings:
    return Settings.from_env()


@pytest.fixture
def topics(stack: Settings) -> Topics:
    names = Topics(unique_name("billing-in"), unique_name("billing-out"))
    make_topics(stack, names.input, names.outcomes, DLQ_TOPIC, partitions=PARTITIONS)
    return names


def dead_letters(stack: Settings, topic: str) -> list[Record]:
    return [
        r
        for r in read_available(stack, DLQ_TOPIC)
        if r.headers.get("original_topic") == topic.encode()
    ]


def expected_sums(values: Sequence[bytes]) -> tuple[dict[tuple[int, int, int], int], int]:
    """Expected quantity per (org, project, category) and the number of billable buckets."""
    sums: dict[tuple[int, int, int], int] = {}
    billable = 0
    for raw in values:
        outcome = expected_outcome(raw)
        if outcome is not None:
            billable += 1
            org_id, project_id, category, quantity = outcome
            key = (org_id, project_id, category)
            sums[key] = sums.get(key, 0) + quantity
    return sums, billable


def sums_of(outcomes: Sequence[dict[str, Any]]) -> dict[tuple[int, int, int], int]:
    sums: dict[tuple[int, int, int], int] = {}
    for o in outcomes:
        key = (o["org_id"], o["project_id"], o["category"])
        sums[key] = sums.get(key, 0) + o["quantity"]
    return sums


# -- outcomes ---------------------------------------------------------------------------------


def test_schema_examples_and_derived_usage_counters(stack: Settings, topics: Topics) -> None:
    examples = [example.path.read_bytes() for example in iter_examples("snuba-generic-metrics")]
    assert len(examples) == 8
    org = 7
    # (metric, value, quantity expected or None): one project per case.
    cases: list[tuple[int, Any, int | None]] = [
        (TRANSACTIONS_USAGE_METRIC_ID, 7.0, 7),
        (TRANSACTIONS_USAGE_METRIC_ID, 2.9, 2),
        (TRANSACTIONS_USAGE_METRIC_ID, 1, 1),
        (TRANSACTIONS_USAGE_METRIC_ID, 1e30, 1000000000000000019884624838656),
        (TRANSACTIONS_USAGE_METRIC_ID, 18446744073709551615, 18446744073709551615),
        (TRANSACTIONS_USAGE_METRIC_ID, -5.0, None),
        (TRANSACTIONS_USAGE_METRIC_ID, 0, None),
        (TRANSACTIONS_USAGE_METRIC_ID, 0.99, None),
        (TRANSACTIONS_USAGE_METRIC_ID, [3.0, 4.0], None),
        (SPANS_USAGE_METRIC_ID, 12.5, 12),
        (SPANS_USAGE_METRIC_ID, 3, 3),
        (SPANS_USAGE_METRIC_ID, -0.0, None),
        (SPANS_USAGE_METRIC_ID, {"format": "array", "data": [1.0]}, None),
    ]
    derived = [
        usage_bucket(metric, value, org, project)
        for project, (metric, value, _) in enumerate(cases, start=100)
    ]
    invalid = [
        b"{not json",
        usage_bucket(TRANSACTIONS_USAGE_METRIC_ID, "seven", org, 900),
        usage_bucket(TRANSACTIONS_USAGE_METRIC_ID, 1.0, org, 903).replace(
            b'"project_id":903', b'"project_id":18446744073709551616'
        ),
        usage_bucket(TRANSACTIONS_USAGE_METRIC_ID, 1.0, org, 901, type="x"),
        usage_bucket(SPANS_USAGE_METRIC_ID, {"format": "lz4", "data": "AAAA"}, org, 902),
    ]
    # Invalid input in the middle: the worker keeps going after each.
    values = examples + derived[:6] + invalid + derived[6:]
    produce(stack, topics.input, ((None, value) for value in values))

    worker = billing_worker(topics.input, topics.outcomes, topics.group())
    try:
        wait_until_committed(stack, topics.group(), topics.input)
    finally:
        assert worker.stop() == 0

    expected = {
        project: (metric, quantity)
        for project, (metric, _, quantity) in enumerate(cases, start=100)
        if quantity is not None
    }
    records = read_all(stack, topics.outcomes, len(expected), timeout=30)
    outcomes = decoded(records)
    assert len(outcomes) == len(expected)
    for record, outcome in zip(records, outcomes, strict=True):
        metric, quantity = expected[outcome["project_id"]]
        category = 2 if metric == TRANSACTIONS_USAGE_METRIC_ID else 12
        # The exact bytes (docs/reference.md, Billing outcomes) after the processing-time timestamp.
        assert record.value.split(b'Z",', 1)[1] == (
            b'"org_id":7,"project_id":%d,"key_id":null,"outcome":0,"reason":null,'
            b'"event_id":null,"category":%d,"quantity":%d}'
            % (outcome["project_id"], category, quantity)
        )
    reasons = sorted(r.headers["reason"].split(b":")[0] for r in dead_letters(stack, topics.input))
    assert reasons == sorted(
        [
            b"invalid_json",
            b"non_numeric_counter",
            b"id_out_of_range",
            b"unknown_metric_type",
            b"unknown_value_format",
        ]
    )


@pytest.fixture(scope="module")
def random_input(stack: Settings) -> tuple[str, list[bytes]]:
    """100,000 random messages on one topic, shared by the plain and the aggregating run."""
    topic = unique_name("billing-random")
    make_topics(stack, topic, DLQ_TOPIC, partitions=PARTITIONS)
    values = [payload.value for payload in sample_traffic(100_000, 20240107)]
    produce(stack, topic, ((None, value) for value in values))
    return topic, values


@pytest.mark.parametrize(
    ("aggregate_ms", "guarantee"),
    [(None, "exactly-once"), (200, "exactly-once"), (200, "at-least-once")],
    ids=["per-bucket", "aggregated", "aggregated-at-least-once"],
)
def test_100k_random_messages_totals_per_project_and_category(
    stack: Settings,
    random_input: tuple[str, list[bytes]],
    aggregate_ms: int | None,
    guarantee: str,
) -> None:
    topic, values = random_input
    outcomes_topic = unique_name("billing-random-out")
    make_topics(stack, outcomes_topic, partitions=PARTITIONS)
    group = unique_name("billing-random-group")
    extra: tuple[str, ...] = ("--processing-guarantee", guarantee)
    if aggregate_ms:
        extra += ("--aggregate-window-ms", str(aggregate_ms))
    worker = billing_worker(topic, outcomes_topic, group, *extra)
    try:
        wait_until_committed(stack, group, topic, timeout=90)
        expected, billable = expected_sums(values)
        metrics = wait_for(
            lambda: _totals_if_complete(worker, expected), 10, "outcome metrics of every bucket"
        )
    finally:
        assert worker.stop() == 0
    outcomes = decoded(read_available(stack, outcomes_topic))
    assert sums_of(outcomes) == expected
    if aggregate_ms:
        assert len(outcomes) < billable / 10
    else:
        assert len(outcomes) == billable
    assert sum(t.outcomes for t in metrics.values()) == len(outcomes)


def _totals_if_complete(
    worker: WorkerProcess, expected: dict[tuple[int, int, int], int]
) -> dict[str, Any] | None:
    text = worker.scrape_or_none()
    if text is None:
        return None
    totals = outcome_totals(text)
    wanted = {
        "transaction": sum(q for (_, _, c), q in expected.items() if c == 2),
        "span": sum(q for (_, _, c), q in expected.items() if c == 12),
    }
    found = {name: t.quantity for name, t in totals.items()}
    return dict(totals) if found == wanted else None


def test_outcomes_topic_outage_backpressures_and_resumes_without_loss(
    stack: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At least once: failed outcomes are produced again, offsets wait for them."""
    _outage_environment(monkeypatch)
    input_topic, outcomes_topic, group, count = _outage_input(stack)
    worker = billing_worker(
        input_topic, outcomes_topic, group, "--max-pending-outcomes", "500",
        "--max-batch-size", "100", "--processing-guarantee", "at-least-once",
    )  # fmt: skip
    try:
        # The in-flight budget fills up and the consumer stops taking messages...
        wait_for(
            lambda: gauge(worker, "workers_billing_outcomes_in_flight") >= 500,
            30,
            "outcomes to pile up in the producer",
        )
        consumed = counter(worker, "workers_step_messages_in_total", 'step="decode"')
        assert consumed < count
        # librdkafka gave up on them (unknown topic): the worker produces them again later.
        wait_for(
            lambda: counter(worker, "workers_billing_produce_retries_total", "") >= 500,
            30,
            "failed outcomes to be produced again",
        )
        # ...and nothing is committed while none of them is acknowledged.
        _end_outage(stack, input_topic, outcomes_topic, group)
    finally:
        assert worker.stop() == 0
    duplicates = sum(_outcomes_per_project(stack, outcomes_topic, count).values()) - count
    print(f"\noutcomes topic outage, at least once: {duplicates} outcomes produced twice")


def test_exactly_once_outcomes_topic_outage_aborts_rewinds_and_bills_each_bucket_once(
    stack: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exactly once: a failed delivery aborts the transaction and the input is read again."""
    _outage_environment(monkeypatch)
    input_topic, outcomes_topic, group, count = _outage_input(stack)
    worker = billing_worker(input_topic, outcomes_topic, group, "--max-batch-size", "100")
    try:
        wait_for(
            lambda: (
                counter(worker, "workers_billing_transactions_aborted_total", "produce_error") >= 2
            ),
            60,
            "transactions to be aborted while the topic is missing",
        )
        _end_outage(stack, input_topic, outcomes_topic, group)
    finally:
        assert worker.stop() == 0
    projects = _outcomes_per_project(stack, outcomes_topic, count)
    assert max(projects.values()) == 1, "an outcome was billed twice"


def _end_outage(stack: Settings, input_topic: str, outcomes_topic: str, group: str) -> None:
    """Nothing is committed while the outcomes topic is missing; once it exists, everything."""
    assert total(committed_offsets(stack, group, input_topic)) == 0
    make_topics(stack, outcomes_topic, partitions=PARTITIONS)
    wait_until_committed(stack, group, input_topic, timeout=60)


def _outcomes_per_project(stack: Settings, outcomes_topic: str, count: int) -> Counter[int]:
    """Outcomes per project of the outage input (one bucket of quantity 2 per project)."""
    outcomes = decoded(read_available(stack, outcomes_topic))
    projects = Counter(o["project_id"] for o in outcomes)
    assert set(projects) == set(range(count)), "an outcome was lost"
    assert all(o["quantity"] == 2 for o in outcomes)
    return projects


def _outage_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # librdkafka holds outcomes for a missing topic this long before failing them (default
    # 30 s): shortened so the worker's own retry path runs within the test.
    monkeypatch.setenv("KAFKA_CONFIG_topic.metadata.propagation.max.ms", "1000")
    # Once a topic is known missing, librdkafka looks for it again only on its periodic
    # metadata refresh (default 5 min): shortened so the "outage" ends when the topic appears.
    monkeypatch.setenv("KAFKA_CONFIG_topic.metadata.refresh.interval.ms", "1000")


def _outage_input(stack: Settings) -> tuple[str, str, str, int]:
    """An input topic of 3,000 usage buckets (one per project) and a missing outcomes topic."""
    input_topic, outcomes_topic = unique_name("billing-outage"), unique_name("billing-late")
    make_topics(stack, input_topic, DLQ_TOPIC, partitions=PARTITIONS)
    count = 3000
    values = [
        usage_bucket(TRANSACTIONS_USAGE_METRIC_ID, 2.0, 11, project) for project in range(count)
    ]
    produce(stack, input_topic, ((None, value) for value in values))
    return input_topic, outcomes_topic, f"{input_topic}-group", count


# -- first-custom-metric flag ---------------------------------------------------------------


@dataclass
class Projects:
    organization_id: int
    ids: list[int]


@pytest.fixture
def projects(stack: Settings) -> Projects:
    """A fresh organization with 12 projects (ids chosen here, platform set)."""
    with psycopg.connect(stack.database_url, autocommit=True) as connection:
        organization = create_organization(connection, f"billing-{uuid.uuid4().hex[:12]}", None)
        base = random.randrange(2**40, 2**50)
        ids = [base + index for index in range(12)]
        for index, project_id in enumerate(ids):
            connection.execute(
                "INSERT INTO projects (id, organization_id, name, slug, platform) "
                "VALUES (%s, %s, %s, %s, %s)",
                (project_id, organization.id, f"p{index}", f"p{index}", "python"),
            )
    return Projects(organization.id, ids)


def _flag_state(stack: Settings, organization_id: int) -> tuple[set[int], Counter[int]]:
    with psycopg.connect(stack.database_url) as connection:
        flagged = {project.project_id for project in flagged_projects(connection, organization_id)}
        events = Counter(
            int(row[0])
            for row in connection.execute(
                "SELECT project_id FROM analytics_events "
                "WHERE event_type = %s AND organization_id = %s",
                (FIRST_CUSTOM_METRIC_EVENT, organization_id),
            ).fetchall()
        )
    return flagged, events


def test_custom_metrics_flag_exactly_the_right_projects_once_with_two_racing_workers(
    stack: Settings, topics: Topics, projects: Projects
) -> None:
    org, ids = projects.organization_id, projects.ids
    custom, other_namespace, preset_key, already = ids[:6], ids[6:8], ids[8], ids[9]
    redis: Redis = Redis.from_url(stack.redis_url)
    with psycopg.connect(stack.database_url, autocommit=True) as connection:
        connection.execute(
            "UPDATE projects SET flags = flags | %s WHERE id = %s",
            (HAS_CUSTOM_METRICS_FLAG, already),
        )
    # A project whose key is already set is skipped, even with the bit clear
    # (docs/reference.md, First-custom-metric flag).
    redis.set(flag_cache_key(org, preset_key), b"1", ex=600)
    missing = [ids[-1] + 1000 + i for i in range(3)]

    values: list[bytes] = []
    for _ in range(40):
        values.extend(custom_bucket(org, project) for project in custom)
    values.extend(custom_bucket(org, project, "d:spans/custom@none") for project in other_namespace)
    values.extend(custom_bucket(org, project, "c:a:custom/x@none") for project in other_namespace)
    values.extend(custom_bucket(org, project) for project in (preset_key, already, *missing))
    values.extend(custom_bucket(org + 10**9, project) for project in ids[10:])  # wrong org
    values.extend(usage_bucket(TRANSACTIONS_USAGE_METRIC_ID, 1.0, org, project) for project in ids)
    random.shuffle(values)
    produce(stack, topics.input, ((None, value) for value in values))

    first = billing_worker(topics.input, topics.outcomes, topics.group("-a"))
    second = billing_worker(topics.input, topics.outcomes, topics.group("-b"))
    try:
        for group in (topics.group("-a"), topics.group("-b")):
            wait_until_committed(stack, group, topics.input)
        texts = [worker.scrape() for worker in (first, second)]
    finally:
        assert first.stop() == 0
        assert second.stop() == 0

    flagged, events = _flag_state(stack, org)
    assert flagged == {*custom, already}
    assert events == dict.fromkeys(custom, 1), "one analytics event per newly flagged project"
    for project in custom:
        ttl = redis.ttl(flag_cache_key(org, project))
        assert 604_000 < ttl <= 604_800
    assert not redis.exists(flag_cache_key(org, other_namespace[0]))
    redis.close()

    def metric(name: str, fragment: str = "") -> float:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for text in texts
            for line in text.splitlines()
            if line.startswith(name) and fragment in line
        )

    assert metric("workers_billing_flags_set_total") == len(custom)
    assert metric("workers_billing_custom_metric_checks_total", 'result="missing_project"') >= 5
    assert metric("workers_billing_custom_metric_checks_total", 'result="redis_key"') >= 2
    # Both workers billed everything (two groups): 12 transactions each.
    assert len(read_available(stack, topics.outcomes)) == 2 * len(ids)


def test_kill_9_mid_stream_then_restart_bills_every_bucket_and_flags_right(
    stack: Settings, topics: Topics, projects: Projects, record_property: Any
) -> None:
    org, ids = projects.organization_id, projects.ids
    custom = ids[:4]
    total_messages = 30_000
    values: list[bytes] = []
    billable_projects: set[int] = set()
    rng = random.Random(5)
    for index in range(total_messages):
        if index % 500 == 7:
            values.append(custom_bucket(org, rng.choice(custom)))
        else:
            # One bucket per project id: an outcome says exactly which bucket it bills.
            metric = rng.choice((TRANSACTIONS_USAGE_METRIC_ID, SPANS_USAGE_METRIC_ID))
            values.append(usage_bucket(metric, float(rng.randint(1, 9)), 99, index))
            billable_projects.add(index)
    group = topics.group()

    def start() -> WorkerProcess:
        # Static membership: the restarted member takes over the dead one's partitions at
        # once instead of waiting for its session to time out.
        return billing_worker(
            topics.input, topics.outcomes, group, "--group-instance-id", "billing-0"
        )

    # A live stream, so the kill lands mid-stream however fast the worker is: a head start,
    # then the rest at a steady 5,000 messages a second while the worker runs.
    head = 2_000
    produce(stack, topics.input, ((None, value) for value in values[:head]))
    victim = start()
    stream = PacedProducer(stack, topics.input, values[head:], per_second=5_000)
    stream.start()
    wait_for(
        lambda: total(committed_offsets(stack, group, topics.input)) >= 4_000,
        60,
        "the worker to commit part of the live stream",
        interval=0.05,
    )
    victim.stop(signal.SIGKILL)
    produced_at_kill = head + stream.produced
    committed_at_kill = total(committed_offsets(stack, group, topics.input))
    assert produced_at_kill < total_messages, "killed too late: the stream had ended"
    stream.join()

    survivor = start()
    try:
        wait_until_committed(stack, group, topics.input, timeout=90)
    finally:
        assert survivor.stop() == 0

    outcomes = decoded(read_available(stack, topics.outcomes))
    per_bucket = Counter(o["project_id"] for o in outcomes)
    assert set(per_bucket) == billable_projects, "a billable bucket has no outcome"
    duplicates = len(outcomes) - len(per_bucket)
    record_property("duplicate_outcomes_after_kill_9", duplicates)
    print(
        f"\nkill -9: committed {committed_at_kill} of {produced_at_kill} produced "
        f"({total_messages} in all) at the kill; "
        f"{len(outcomes)} outcomes for {len(per_bucket)} buckets: {duplicates} duplicates"
    )
    assert duplicates == 0, "exactly-once (the default) billed a bucket twice"
    flagged, events = _flag_state(stack, org)
    assert flagged == set(custom)
    assert events == dict.fromkeys(custom, 1)


# -- store outages ----------------------------------------------------------------------------


class OutageProxy:
    """A TCP proxy on 127.0.0.1 that the test switches between forwarding and refusing.

    While down, every accepted connection is closed at once and open ones are cut, which is
    what a client sees of a crashed or unreachable server; `up()` forwards again.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.forwarding = threading.Event()
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.forwarding.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open.extend((client, server))
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def up(self) -> None:
        self.forwarding.set()

    def down(self) -> None:
        self.forwarding.clear()
        with self.lock:
            sockets, self.open = self.open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.stopped.set()
        self.down()
        self.listener.close()


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


def test_redis_and_postgres_outages_hold_the_offsets_and_lose_no_flag(
    stack: Settings, topics: Topics, projects: Projects, monkeypatch: pytest.MonkeyPatch
) -> None:
    org, ids = projects.organization_id, projects.ids
    custom = ids[:3]
    redis_proxy = OutageProxy(urlsplit(stack.redis_url).port or 6379)
    postgres_proxy = OutageProxy(urlsplit(stack.database_url).port or 5432)
    monkeypatch.setenv("REDIS_URL", _via(stack.redis_url, redis_proxy.port))
    monkeypatch.setenv("DATABASE_URL", _via(stack.database_url, postgres_proxy.port))
    values = [custom_bucket(org, project) for project in custom for _ in range(5)]
    values += [usage_bucket(SPANS_USAGE_METRIC_ID, 3.0, org, project) for project in ids]
    random.shuffle(values)
    produce(stack, topics.input, ((None, value) for value in values))
    group = topics.group()
    worker = billing_worker(topics.input, topics.outcomes, group)
    try:
        # Redis down: the first step of the flag work fails and is retried.
        wait_for(
            lambda: counter(worker, "workers_billing_flag_errors_total", 'store="redis"') >= 2,
            30,
            "Redis errors",
        )
        redis_proxy.up()
        # PostgreSQL down: the conditional update fails and is retried.
        wait_for(
            lambda: counter(worker, "workers_billing_flag_errors_total", 'store="postgres"') >= 2,
            30,
            "PostgreSQL errors",
        )
        # Every partition holding a custom metric is held back; nothing is flagged yet.
        assert total(committed_offsets(stack, group, topics.input)) < len(values)
        assert _flag_state(stack, org) == (set(), Counter())
        postgres_proxy.up()
        wait_until_committed(stack, group, topics.input)
    finally:
        assert worker.stop() == 0
        redis_proxy.close()
        postgres_proxy.close()
    flagged, events = _flag_state(stack, org)
    assert flagged == set(custom)
    assert events == dict.fromkeys(custom, 1)
    assert len(read_available(stack, topics.outcomes)) == len(ids)

"""`workers dlq list | show | replay` against the real Kafka and PostgreSQL.

Every test owns its topics: the workers run from `tests.support.dlq_registry`, whose DLQ
topic is the test's own (`WORKERS_TEST_DLQ_TOPIC`), and the commands run as an operator
runs them, in a subprocess over the same registry.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from arroyo.types import Partition, Topic
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewPartitions

from harness.billing import usage_bucket
from harness.kafka import make_topics, unique_name
from harness.waiting import wait_for
from harness.worker_process import ROOT, WorkerProcess
from tests.support.dlq_registry import DLQ_TOPIC_ENV, LOADER, run_cli
from tests.support.kafka import produce, read_available, wait_until_committed
from workers.billing.counting import TRANSACTIONS_USAGE_METRIC_ID
from workers.common.chunk_uploads import encode_headers
from workers.common.dlq import dlq_headers
from workers.common.kafka_config import admin_configuration
from workers.common.kafka_offsets import high_watermarks, total
from workers.common.settings import Settings
from workers.dlq.claims import claim, start_replay
from workers.dlq.letters import REPLAYED_FROM_HEADER, DeadLetter
from workers.dlq.reading import read_dead_letters
from workers.dlq.selection import Selection

pytestmark = pytest.mark.integration

OPERATOR = "dlq-test-operator"


@pytest.fixture
def dlq_topic(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> str:
    """A DLQ topic of the test's own, which the workers and commands it starts use."""
    topic = unique_name("dlq")
    make_topics(settings, topic, partitions=2)
    monkeypatch.setenv(DLQ_TOPIC_ENV, topic)
    return topic


def wait_for_dead_letters(settings: Settings, topic: str, count: int) -> list[DeadLetter]:
    def enough() -> list[DeadLetter] | None:
        found = list(read_dead_letters(settings, topic))
        return found if len(found) >= count else None

    return wait_for(enough, 60, f"{count} DLQ messages in {topic}", interval=0.5)


def replays(connection: psycopg.Connection, topic: str) -> list[tuple[str, str, int, int, str]]:
    rows = connection.execute(
        "SELECT requested_by, state, replayed, already_replayed, selection->>'reason' "
        "FROM dlq_replays WHERE dlq_topic = %s ORDER BY id",
        (topic,),
    ).fetchall()
    return [(str(a), str(b), int(c), int(d), str(e)) for a, b, c, d, e in rows]


def claims(connection: psycopg.Connection, topic: str) -> dict[tuple[int, int], str]:
    rows = connection.execute(
        "SELECT dlq_partition, dlq_offset, state FROM dlq_replayed_messages WHERE dlq_topic = %s",
        (topic,),
    ).fetchall()
    return {(int(p), int(o)): str(state) for p, o, state in rows}


# ---- blob-ingest: replay after the cause is removed -----------------------------------------


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def chunk(data: bytes, organization_id: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    checksum = sha1(data)
    return checksum.encode(), data, encode_headers(organization_id, checksum, "identity", 1)


def owners(connection: psycopg.Connection, checksums: list[str]) -> dict[str, list[int]]:
    rows = connection.execute(
        "SELECT b.checksum, array_agg(o.organization_id) FROM blobs b "
        "JOIN blob_owners o ON o.blob_id = b.id WHERE b.checksum = ANY(%s) GROUP BY b.checksum",
        (checksums,),
    ).fetchall()
    return {str(checksum): list(found) for checksum, found in rows}


@pytest.fixture
def blob_worker(
    settings: Settings, dlq_topic: str, tmp_path: Path
) -> Iterator[tuple[str, WorkerProcess]]:
    topic = unique_name("dlq-chunks")
    make_topics(settings, topic, partitions=2)
    worker = WorkerProcess(
        "blob-ingest",
        "--topic", topic, "--consumer-group", topic, "--max-batch-time-ms", "50",
        "--storage-url", f"file://{tmp_path / 'blobs'}",
        loader=LOADER, log_name=topic,
    )  # fmt: skip
    yield topic, worker
    if worker.process.poll() is None:
        assert worker.stop() == 0


def produce_chunks(
    settings: Settings, topic: str, chunks: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> None:
    producer = Producer(settings.kafka_client_config())
    for key, value, headers in chunks:
        producer.produce(topic, value=value, key=key, headers=[*headers])
    assert producer.flush(30) == 0


def test_chunks_of_an_unknown_organization_are_stored_once_replayed_after_it_exists(
    settings: Settings,
    connection: psycopg.Connection,
    dlq_topic: str,
    blob_worker: tuple[str, WorkerProcess],
) -> None:
    topic, _worker = blob_worker
    # Far beyond the identity sequence, so no organization created later can take this id.
    missing_org = 2**62 + uuid.uuid4().int % 2**40
    lost = [os.urandom(3000) for _ in range(3)]
    key, value, headers = chunk(b"no organization header", missing_org)
    headerless = (key, value, headers[1:])
    produce_chunks(settings, topic, [*(chunk(data, missing_org) for data in lost), headerless])
    letters = wait_for_dead_letters(settings, dlq_topic, 4)
    wait_until_committed(settings, topic, topic)
    assert sorted(letter.reason_code for letter in letters) == [
        "missing_header",
        *["unknown_organization"] * 3,
    ]

    listed = run_cli("dlq", "list", "blob-ingest")
    assert listed.exit_code == 0, listed.stderr
    rows = {line.split()[2]: line.split() for line in listed.lines[1:]}
    assert rows["unknown_organization"][:5] == [
        "blob-ingest", dlq_topic, "unknown_organization", "3", "0",
    ]  # fmt: skip
    assert rows["missing_header"][3] == "1"

    shown = run_cli("dlq", "show", "blob-ingest", "--reason", "unknown_organization",
                    "--limit", "2", "--preview-bytes", "24")  # fmt: skip
    assert shown.exit_code == 0, shown.stderr
    assert shown.stdout.count("reason:   unknown_organization: organization") == 2
    assert len(re.findall(rf"original: {topic}:[01]:\d+", shown.stdout)) == 2
    assert shown.stdout.count(f"organization-id: {missing_org}") == 2
    assert "bytes in all" in shown.stdout

    # The cause is removed: the organization now exists.
    connection.execute(
        "INSERT INTO organizations (id, slug, name) VALUES (%s, %s, 'replayed')",
        (missing_org, f"dlq-{uuid.uuid4().hex[:12]}"),
    )
    input_before = total(high_watermarks(settings, topic))

    dry = run_cli("dlq", "replay", "blob-ingest", "--reason", "unknown_organization", "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert [line.split()[0] for line in dry.lines[:-1]] == ["replay"] * 3
    assert dry.lines[-1] == "dry run, nothing written; replay: 3"
    assert replays(connection, dlq_topic) == []
    assert total(high_watermarks(settings, topic)) == input_before

    first = run_cli("dlq", "replay", "blob-ingest", "--reason", "unknown_organization")
    assert first.exit_code == 0, first.stderr
    assert re.search(r"3 selected, 3 replayed, 0 already replayed, 0 unreplayable, 0 failed",
                     first.stdout)  # fmt: skip
    checksums = [sha1(data) for data in lost]
    stored = wait_for(
        lambda: (found := owners(connection, checksums)) and len(found) == 3 and found,
        60,
        "the replayed chunks stored",
    )
    assert stored == {checksum: [missing_org] for checksum in checksums}

    replayed = [r for r in read_available(settings, topic) if REPLAYED_FROM_HEADER in r.headers]
    sources = {letter.position for letter in letters if letter.reason_code != "missing_header"}
    assert {r.headers[REPLAYED_FROM_HEADER].decode() for r in replayed} == {
        str(position) for position in sources
    }
    assert all(r.headers["organization-id"] == str(missing_org).encode() for r in replayed)
    assert all("reason" not in r.headers and "original_topic" not in r.headers for r in replayed)

    second = run_cli("dlq", "replay", "blob-ingest", "--reason", "unknown_organization")
    assert second.exit_code == 0, second.stderr
    assert "3 selected, 0 replayed, 3 already replayed" in second.stdout
    assert total(high_watermarks(settings, topic)) == input_before + 3
    assert replays(connection, dlq_topic) == [
        (OPERATOR, "done", 3, 0, "unknown_organization"),
        (OPERATOR, "done", 0, 3, "unknown_organization"),
    ]
    assert set(claims(connection, dlq_topic).values()) == {"produced"}
    relisted = run_cli("dlq", "list", "blob-ingest")
    row = next(line.split() for line in relisted.lines if "unknown_organization" in line)
    assert row[3:5] == ["3", "3"]


# ---- billing: a replay never bills twice ---------------------------------------------------


def test_billing_replays_only_dead_letters_and_bills_nothing_twice(
    settings: Settings, connection: psycopg.Connection, dlq_topic: str
) -> None:
    """Exactly-once billing writes its DLQ copies in transactions (read committed here). A
    replayed message that is still invalid is dead-lettered again, as a new DLQ message;
    the outcomes of the billed messages never come again."""
    input_topic, outcomes = unique_name("dlq-billing-in"), unique_name("dlq-billing-out")
    make_topics(settings, input_topic, outcomes, partitions=2)
    valid = [usage_bucket(TRANSACTIONS_USAGE_METRIC_ID, 5.0, 1, project) for project in range(6)]
    invalid = [b"{not json", b'{"org_id": 1}']
    produce(settings, input_topic, [(None, value) for value in [*valid, *invalid]])
    worker = WorkerProcess(
        "billing",
        "--topic", input_topic, "--consumer-group", input_topic, "--outcomes-topic", outcomes,
        "--processing-guarantee", "exactly-once",
        loader=LOADER, log_name=input_topic,
    )  # fmt: skip
    try:
        wait_for_dead_letters(settings, dlq_topic, 2)
        wait_until_committed(settings, input_topic, input_topic)
        assert len(read_available(settings, outcomes)) == 6

        first = run_cli("dlq", "replay", "billing")
        assert "2 selected, 2 replayed, 0 already replayed" in first.stdout, first.stderr
        again = wait_for_dead_letters(settings, dlq_topic, 4)
        wait_until_committed(settings, input_topic, input_topic)
        second = run_cli("dlq", "replay", "billing")
        assert "4 selected, 2 replayed, 2 already replayed" in second.stdout, second.stderr
        wait_for_dead_letters(settings, dlq_topic, 6)
        wait_until_committed(settings, input_topic, input_topic)
    finally:
        assert worker.stop() == 0
    assert len(read_available(settings, outcomes)) == 6
    firsts = {str(letter.position) for letter in again if letter.value in invalid}
    redead = [letter for letter in again if REPLAYED_FROM_HEADER in dict(letter.headers)]
    assert len(redead) == 2
    sources = {(dict(letter.headers)[REPLAYED_FROM_HEADER] or b"").decode() for letter in redead}
    assert sources < firsts
    assert sorted(letter.value or b"" for letter in redead) == sorted(invalid)


# ---- idempotence and crashes ----------------------------------------------------------------


def write_dead_letters(
    settings: Settings, dlq_topic: str, input_topic: str, count: int, partition: int = 0
) -> None:
    """DLQ copies as a worker writes them, of messages of `input_topic`'s `partition`."""
    producer = Producer(settings.kafka_client_config())
    for offset in range(count):
        origin = Partition(Topic(input_topic), partition)
        headers = dlq_headers(
            [("n", str(offset).encode())], origin, offset, "poison_pill", "test-echo"
        )
        producer.produce(dlq_topic, value=b"poison %d" % offset, key=b"k", headers=[*headers])
    assert producer.flush(30) == 0


def test_two_replays_at_once_replay_each_message_once(
    settings: Settings, connection: psycopg.Connection, dlq_topic: str
) -> None:
    input_topic = unique_name("dlq-echo-in")
    make_topics(settings, input_topic, partitions=1)
    write_dead_letters(settings, dlq_topic, input_topic, 300)
    command = [sys.executable, "-m", "workers.registry_cli", LOADER, "dlq", "replay", "test-echo"]
    runs = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**os.environ, "USER": f"operator-{n}"})
        for n in range(2)
    ]  # fmt: skip
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0]
    replayed = [int(re.search(r"(\d+) replayed,", out).group(1)) for out in outputs]  # type: ignore[union-attr]
    assert sum(replayed) == 300
    assert total(high_watermarks(settings, input_topic)) == 300
    values = sorted(r.value for r in read_available(settings, input_topic))
    assert values == sorted(b"poison %d" % n for n in range(300))
    assert len(claims(connection, dlq_topic)) == 300


def test_an_interrupted_replays_claims_wait_for_retry_unconfirmed_which_checks_kafka_first(
    settings: Settings, connection: psycopg.Connection, dlq_topic: str
) -> None:
    input_topic = unique_name("dlq-echo-in")
    make_topics(settings, input_topic, partitions=1)
    write_dead_letters(settings, dlq_topic, input_topic, 5)
    letters = wait_for_dead_letters(settings, dlq_topic, 5)
    # A run claimed two messages, produced the first, and died before recording anything
    # (its connection closed, so its lock is free).
    with psycopg.connect(settings.database_url, autocommit=True) as crashed:
        dead_run = start_replay(crashed, Selection("test-echo", dlq_topic), "crashed-operator")
        claim(crashed, dead_run, letters[:2])
    producer = Producer(settings.kafka_client_config())
    producer.produce(input_topic, value=letters[0].value, key=letters[0].key, partition=0,
                     headers=[*letters[0].replay_headers()])  # fmt: skip
    assert producer.flush(30) == 0

    result = run_cli("dlq", "replay", "test-echo")
    assert result.exit_code == 0, result.stderr
    assert f"replay #{dead_run} was interrupted" in result.stderr
    assert "5 selected, 3 replayed, 2 already replayed" in result.stdout
    state = connection.execute("SELECT state FROM dlq_replays WHERE id = %s", (dead_run,))
    assert state.fetchone() == ("interrupted",)
    assert sorted(claims(connection, dlq_topic).values()) == ["claimed"] * 2 + ["produced"] * 3

    dry = run_cli("dlq", "replay", "test-echo", "--retry-unconfirmed", "--dry-run")
    assert [line.split()[0] for line in dry.lines[:-1]] == ["already", "retry"] + ["already"] * 3
    assert "produced (found in the original topic)" in dry.lines[0]
    assert sorted(claims(connection, dlq_topic).values()) == ["claimed"] * 2 + ["produced"] * 3

    retried = run_cli("dlq", "replay", "test-echo", "--retry-unconfirmed")
    assert retried.exit_code == 0, retried.stderr
    assert "5 selected, 1 replayed, 4 already replayed, 0 unreplayable, 0 failed, " \
           "1 found in the original topic" in retried.stdout  # fmt: skip
    produced = [
        r.headers[REPLAYED_FROM_HEADER].decode() for r in read_available(settings, input_topic)
    ]
    assert sorted(produced) == sorted(str(letter.position) for letter in letters)
    assert set(claims(connection, dlq_topic).values()) == {"produced"}

    again = run_cli("dlq", "replay", "test-echo", "--retry-unconfirmed")
    assert "0 replayed, 5 already replayed, 0 unreplayable, 0 failed, 0 found" in again.stdout
    assert total(high_watermarks(settings, input_topic)) == 5


def test_messages_kafka_refused_are_replayed_by_retry_unconfirmed_once_the_cause_is_fixed(
    settings: Settings, connection: psycopg.Connection, dlq_topic: str
) -> None:
    input_topic = unique_name("dlq-echo-in")
    make_topics(settings, input_topic, partitions=1)
    # Copies of messages of a partition the topic does not have (yet): Kafka refuses them.
    write_dead_letters(settings, dlq_topic, input_topic, 2, partition=5)
    wait_for_dead_letters(settings, dlq_topic, 2)
    result = run_cli("dlq", "replay", "test-echo")
    assert result.exit_code == 1
    assert "2 failed" in result.stdout
    assert "refused by Kafka" in result.stderr
    assert "--retry-unconfirmed replays them" in result.stderr
    assert set(claims(connection, dlq_topic).values()) == {"failed"}
    plain = run_cli("dlq", "replay", "test-echo", "--dry-run")
    assert plain.lines[-1] == "dry run, nothing written; already failed: 2"

    admin = AdminClient(admin_configuration(settings))
    admin.create_partitions([NewPartitions(input_topic, 6)])[input_topic].result(timeout=30)
    retried = run_cli("dlq", "replay", "test-echo", "--retry-unconfirmed")
    assert retried.exit_code == 0, retried.stderr
    assert "2 selected, 2 replayed, 0 already replayed" in retried.stdout
    assert high_watermarks(settings, input_topic)[5] == 2
    assert set(claims(connection, dlq_topic).values()) == {"produced"}


def test_dlq_topic_reads_another_topic_than_the_workers_own(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DLQ_TOPIC_ENV, raising=False)  # test-echo's own DLQ is test-echo-dlq
    other = unique_name("dlq-other")
    make_topics(settings, other, partitions=1)
    write_dead_letters(settings, other, unique_name("dlq-echo-in"), 3)
    wait_for_dead_letters(settings, other, 3)
    shown = run_cli("dlq", "show", "test-echo", "--dlq-topic", other, "--limit", "2")
    assert shown.exit_code == 0, shown.stderr
    assert [line.split()[0] for line in shown.lines if line.startswith(other)] == [
        f"{other}:0:1",
        f"{other}:0:2",
    ]
    assert shown.stdout.count("reason:   poison_pill") == 2
    missing = run_cli("dlq", "show", "test-echo", "--dlq-topic", unique_name("dlq-missing"))
    assert missing.exit_code == 1
    assert "does not exist" in missing.stderr

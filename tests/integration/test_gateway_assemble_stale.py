"""What upstream's forgetting gives a client, on the real gateway and stack (docs/gateway.md,
Assemble; docs/blob-lifecycle.md): a task left `created` because its request never reached
Kafka is enqueued again, once, by a request that lists its chunks; and the chunks an
assemble request is told are present get a fresh timestamp once they are 12 h old, so the
sweep keeps them for the file. No assemble worker runs here; the blobs are rows the tests
insert (the gateway never reads a stored chunk)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
import pytest
from redis import Redis

from harness.gateway import GatewayProcess
from harness.kafka import make_topics, unique_name
from tests.support.gateway_assemble import (
    Org,
    cached_status,
    dif_answer,
    make_org,
    requests_on,
)
from workers.common.assemble_requests import AssembleRequest, encode_status
from workers.common.settings import Settings
from workers.common.storage import random_blob_path

pytestmark = pytest.mark.integration

RACERS = 20
#: Older than the status cache's 10 minutes, after which upstream forgets a status.
FORGOTTEN = timedelta(minutes=11)


@dataclass
class Stack:
    settings: Settings
    gateway: GatewayProcess
    assemble_topic: str
    blob_ids: list[int] = field(default_factory=list)

    def enqueued(self, checksum: str) -> list[AssembleRequest]:
        return [
            request
            for _, request in requests_on(self.settings, self.assemble_topic)
            if request.checksum == checksum
        ]

    def blob(self, org: Org, age: timedelta) -> str:
        """The checksum of a new blob row `org` owns, `age` old."""
        data = os.urandom(64)
        blob_id, checksum = uuid.uuid4().int % 2**62, hashlib.sha1(data).hexdigest()
        with psycopg.connect(self.settings.database_url, autocommit=True) as connection:
            connection.execute(
                "INSERT INTO blobs (id, path, size, checksum, timestamp) "
                "VALUES (%s, %s, %s, %s, now() - %s)",
                (blob_id, random_blob_path(), len(data), checksum, age),
            )
            connection.execute(
                "INSERT INTO blob_owners (blob_id, organization_id) VALUES (%s, %s)",
                (blob_id, org.id),
            )
        self.blob_ids.append(blob_id)
        return checksum

    def blob_timestamps(self, checksums: list[str]) -> dict[str, datetime]:
        with psycopg.connect(self.settings.database_url) as connection:
            rows = connection.execute(
                "SELECT checksum, timestamp FROM blobs WHERE checksum = ANY(%s)", (checksums,)
            ).fetchall()
        return {str(checksum): timestamp for checksum, timestamp in rows}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    settings = Settings.from_env()
    chunk_topic = unique_name("gateway-stale-chunks")
    assemble_topic = unique_name("gateway-stale-assemble")
    make_topics(settings, chunk_topic, assemble_topic, partitions=1)
    # Twenty requests of one organization are answered at once, so that they race.
    gateway = GatewayProcess(
        "--topic", chunk_topic, "--assemble-topic", assemble_topic,
        "--max-concurrent-assembles", "20", "--max-assembles-per-org", "20",
        log_name=assemble_topic,
    )  # fmt: skip
    made = Stack(settings, gateway, assemble_topic)
    try:
        yield made
    finally:
        assert gateway.stop() == 0
        with psycopg.connect(settings.database_url, autocommit=True) as connection:
            connection.execute("DELETE FROM blobs WHERE id = ANY(%s)", (made.blob_ids,))


def _created_task(stack: Stack, org: Org, chunks: list[str], age: timedelta) -> tuple[str, int]:
    """(checksum, task id) of a file whose `created` row the gateway inserted `age` ago and
    whose request never reached Kafka (the gateway died in between): no message, and its
    cached status long expired."""
    checksum = hashlib.sha1(os.urandom(16)).hexdigest()
    with psycopg.connect(stack.settings.database_url, autocommit=True) as connection:
        row = connection.execute(
            "INSERT INTO assemble_tasks (organization_id, project_id, kind, checksum, name, "
            "chunks, state, date_added, date_updated) "
            "VALUES (%s, %s, 'dif', %s, 'hello', %s, 'created', now() - %s, now() - %s) "
            "RETURNING id",
            (org.id, org.project_id, checksum, chunks, age, age),
        ).fetchone()
    assert row is not None
    return checksum, int(row[0])


def _updated_ago(stack: Stack, task_id: int) -> timedelta:
    with psycopg.connect(stack.settings.database_url) as connection:
        row = connection.execute(
            "SELECT now() - date_updated FROM assemble_tasks WHERE id = %s", (task_id,)
        ).fetchone()
    assert row is not None
    age: timedelta = row[0]
    return age


def test_a_created_task_whose_request_was_lost_is_enqueued_again_once(stack: Stack) -> None:
    org = make_org(stack.settings)
    chunks = [stack.blob(org, timedelta(minutes=20)), stack.blob(org, timedelta(minutes=20))]
    checksum, task_id = _created_task(stack, org, chunks, FORGOTTEN)

    # A poll without chunks cannot enqueue anything: it reads the row.
    assert dif_answer(stack.gateway, org, checksum, [])["state"] == "created"
    assert stack.enqueued(checksum) == []

    with ThreadPoolExecutor(RACERS) as pool:
        answers = list(
            pool.map(lambda _: dif_answer(stack.gateway, org, checksum, chunks), range(RACERS))
        )
    assert answers == [{"state": "created", "missingChunks": [], "detail": None}] * RACERS
    assert stack.enqueued(checksum) == [AssembleRequest(task_id, org.id, checksum)]
    assert _updated_ago(stack, task_id) < timedelta(minutes=1)
    with Redis.from_url(stack.settings.redis_url) as redis:
        assert cached_status(redis, org, "dif", checksum) == encode_status("created")
    with psycopg.connect(stack.settings.database_url) as connection:
        assert connection.execute(
            "SELECT count(*) FROM assemble_tasks WHERE organization_id = %s AND checksum = %s",
            (org.id, checksum),
        ).fetchone() == (1,)

    # Once enqueued again, the row is recent: later requests do not enqueue it a third time.
    with Redis.from_url(stack.settings.redis_url) as redis:
        redis.delete(f"assemble-status:{org.id}:dif:{org.project_id}:{checksum}")
    assert dif_answer(stack.gateway, org, checksum, chunks)["state"] == "created"
    assert len(stack.enqueued(checksum)) == 1


def test_a_recently_created_task_is_not_enqueued_again(stack: Stack) -> None:
    org = make_org(stack.settings)
    chunks = [stack.blob(org, timedelta(minutes=20))]
    checksum, task_id = _created_task(stack, org, chunks, timedelta(minutes=9))
    assert dif_answer(stack.gateway, org, checksum, chunks)["state"] == "created"
    assert stack.enqueued(checksum) == []
    assert _updated_ago(stack, task_id) > timedelta(minutes=8)


def test_chunks_reported_present_are_refreshed_once_twelve_hours_old(stack: Stack) -> None:
    org = make_org(stack.settings)
    aged, young = stack.blob(org, timedelta(hours=13)), stack.blob(org, timedelta(hours=1))
    before = stack.blob_timestamps([aged, young])
    checksum = hashlib.sha1(os.urandom(16)).hexdigest()
    assert dif_answer(stack.gateway, org, checksum, [aged, young])["state"] == "created"
    after = stack.blob_timestamps([aged, young])
    with psycopg.connect(stack.settings.database_url) as connection:
        row = connection.execute("SELECT now()").fetchone()
    assert row is not None
    assert row[0] - after[aged] < timedelta(minutes=1)
    assert after[young] == before[young]

"""The assemble endpoints answer at once and enqueue each file once for the assemble worker
(docs/gateway.md, Assemble): against the real gateway, stack and blob-ingest worker. No
assemble worker runs here: a test moves a file on itself, as the worker would."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from redis import Redis

from harness.gateway import GatewayProcess, sha1
from harness.kafka import make_topics, unique_name
from harness.worker_process import WorkerProcess
from tests.support.gateway_assemble import (
    PROJECT,
    Org,
    cached_status,
    client,
    dif_answer,
    make_org,
    record_debug_file,
    requests_on,
    set_status,
    tasks,
    upload_stored,
)
from workers.blob_ingest.definition import DLQ_TOPIC
from workers.common.assemble_requests import AssembleRequest, encode_status
from workers.common.net import free_port
from workers.common.settings import Settings

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Stack:
    settings: Settings
    gateway: GatewayProcess
    chunk_topic: str
    assemble_topic: str

    def enqueued(self, checksum: str) -> list[tuple[bytes | None, AssembleRequest]]:
        return [
            (key, request)
            for key, request in requests_on(self.settings, self.assemble_topic)
            if request.checksum == checksum
        ]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = Settings.from_env()
    chunk_topic = unique_name("gateway-queue-chunks")
    assemble_topic = unique_name("gateway-queue-assemble")
    make_topics(settings, chunk_topic, assemble_topic, DLQ_TOPIC, partitions=1)
    storage_root: Path = tmp_path_factory.mktemp("assemble-queue") / "blobs"
    storage_root.mkdir()
    worker = WorkerProcess(
        "blob-ingest",
        "--topic", chunk_topic, "--consumer-group", chunk_topic,
        "--storage-url", f"file://{storage_root}", "--max-batch-time-ms", "50",
        log_name=f"{chunk_topic}-worker",
    )  # fmt: skip
    # Twenty requests of one organization are answered at once, so that they race.
    gateway = GatewayProcess(
        "--topic", chunk_topic, "--assemble-topic", assemble_topic,
        "--max-concurrent-assembles", "20", "--max-assembles-per-org", "20",
        log_name=assemble_topic,
    )  # fmt: skip
    try:
        yield Stack(settings, gateway, chunk_topic, assemble_topic)
    finally:
        assert gateway.stop() == 0
        assert worker.stop() == 0


def _stored_file(stack: Stack, org: Org, *sizes: int) -> tuple[str, list[str]]:
    """(file sha1, chunk sha1s) of a file whose chunks blob-ingest stored."""
    pieces = [os.urandom(size) for size in sizes]
    upload_stored(stack.settings, stack.gateway, org, *pieces)
    return sha1(b"".join(pieces)), [sha1(piece) for piece in pieces]


def test_a_file_whose_chunks_are_stored_is_created_at_once_and_enqueued_once(
    stack: Stack,
) -> None:
    org = make_org(stack.settings)
    checksum, chunks = _stored_file(stack, org, 5000, 7000)
    enqueued_before = stack.gateway.metric("workers_gateway_assemble_enqueued_total", kind="dif")
    first = dif_answer(stack.gateway, org, checksum, chunks)
    assert first == {"state": "created", "missingChunks": [], "detail": None}
    (task,) = tasks(stack.settings, org, checksum)
    assert (task["kind"], task["project_id"], task["state"]) == ("dif", org.project_id, "created")
    assert (task["name"], [c.strip() for c in task["chunks"]]) == ("hello", chunks)
    assert stack.enqueued(checksum) == [
        (checksum.encode(), AssembleRequest(task["id"], org.id, checksum))
    ]
    with Redis.from_url(stack.settings.redis_url) as redis:
        assert cached_status(redis, org, "dif", checksum) == encode_status("created")
    assert (
        stack.gateway.metric("workers_gateway_assemble_enqueued_total", kind="dif")
        == enqueued_before + 1
    )

    # Polls answer from the cache, then from the row once the cache forgot: never again work.
    assert dif_answer(stack.gateway, org, checksum, chunks)["state"] == "created"
    set_status(stack.settings, org, "dif", checksum, "assembling")
    assert dif_answer(stack.gateway, org, checksum, chunks)["state"] == "assembling"
    assert len(tasks(stack.settings, org, checksum)) == 1
    assert len(stack.enqueued(checksum)) == 1

    # The worker's `ok`: the answer carries the `dif` object of the stored file.
    debug_file_id = record_debug_file(stack.settings, org, checksum, chunks)
    set_status(stack.settings, org, "dif", checksum, "ok")
    ok = dif_answer(stack.gateway, org, checksum, chunks)
    assert (ok["state"], ok["missingChunks"], ok["detail"]) == ("ok", [], None)
    dif = ok["dif"]
    assert (dif["sha1"], dif["size"], dif["objectName"], dif["cpuName"]) == (
        checksum, 1234, "hello", "x86_64",
    )  # fmt: skip
    assert dif["debugId"] == "c0bcc3f1-9827-fe65-3058-404b2831d9e6"
    assert (dif["symbolType"], dif["data"]) == (
        "elf",
        {"type": "dbg", "features": ["debug", "symtab"]},
    )
    assert dif["id"] == str(debug_file_id)
    with Redis.from_url(stack.settings.redis_url) as redis:
        redis.delete(f"assemble-status:{org.id}:dif:{org.project_id}:{checksum}")
    assert dif_answer(stack.gateway, org, checksum, chunks)["dif"] == dif
    assert len(stack.enqueued(checksum)) == 1


def test_twenty_concurrent_requests_for_one_bundle_enqueue_it_once(stack: Stack) -> None:
    org = make_org(stack.settings)
    checksum, chunks = _stored_file(stack, org, 3000)
    body = {
        "checksum": checksum,
        "chunks": chunks,
        "projects": [PROJECT],
        "version": "1.0",
        "dist": "web",
    }

    def post(_: int) -> httpx.Response:
        with client(stack.gateway, org) as http:
            return http.post(org.bundle_route(), json=body)

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(post, range(20)))
    assert [response.status_code for response in responses] == [200] * 20
    assert {response.json()["state"] for response in responses} == {"created"}
    (task,) = tasks(stack.settings, org, checksum)
    assert (task["kind"], task["project_id"], task["projects"]) == (
        "artifact_bundle", None, [PROJECT],
    )  # fmt: skip
    assert (task["release"], task["dist"], task["state"]) == ("1.0", "web", "created")
    assert stack.enqueued(checksum) == [
        (checksum.encode(), AssembleRequest(task["id"], org.id, checksum))
    ]


def test_a_cached_state_is_answered_without_the_database(stack: Stack) -> None:
    """States only in Redis, for files whose chunks were never uploaded: the database would
    answer `not_found` with every chunk missing."""
    org = make_org(stack.settings)
    assembling, failed = sha1(os.urandom(8)), sha1(os.urandom(8))
    set_status(stack.settings, org, "dif", assembling, "assembling", in_database=False)
    set_status(stack.settings, org, "dif", failed, "error", "Reported checksum mismatch",
               in_database=False)  # fmt: skip
    with client(stack.gateway, org) as http:
        answers = http.post(
            org.dif_route(),
            json={
                assembling: {"name": "a", "chunks": ["a" * 40]},
                failed: {"name": "b", "chunks": ["b" * 40]},
            },
        ).json()
    assert answers == {
        assembling: {"state": "assembling", "missingChunks": [], "detail": None},
        failed: {"state": "error", "missingChunks": [], "detail": "Reported checksum mismatch"},
    }
    set_status(stack.settings, org, "artifact_bundle", "f" * 40, "ok", in_database=False,
               bundle=True)  # fmt: skip
    with client(stack.gateway, org) as http:
        bundle = http.post(
            org.bundle_route(), json={"checksum": "f" * 40, "chunks": ["c" * 40]}
        ).json()
    assert bundle == {"state": "ok", "missingChunks": [], "detail": None}
    for checksum in (assembling, failed, "f" * 40):
        assert tasks(stack.settings, org, checksum) == []


def test_a_task_in_error_is_answered_then_retried_once_forgotten(stack: Stack) -> None:
    org = make_org(stack.settings)
    checksum, chunks = _stored_file(stack, org, 4000)
    assert dif_answer(stack.gateway, org, checksum, chunks)["state"] == "created"
    set_status(stack.settings, org, "dif", checksum, "error", "Reported checksum mismatch")
    with Redis.from_url(stack.settings.redis_url) as redis:
        redis.delete(f"assemble-status:{org.id}:dif:{org.project_id}:{checksum}")
    # The row's error, as long as the cache would have kept it.
    failed = dif_answer(stack.gateway, org, checksum, chunks)
    assert (failed["state"], failed["detail"]) == ("error", "Reported checksum mismatch")
    assert len(stack.enqueued(checksum)) == 1
    # Past the cache's 10 minutes upstream has forgotten it: the file is enqueued again.
    with psycopg.connect(stack.settings.database_url, autocommit=True) as connection:
        connection.execute(
            "UPDATE assemble_tasks SET date_updated = now() - interval '11 minutes' "
            "WHERE organization_id = %s AND checksum = %s",
            (org.id, checksum),
        )
    # A poll without chunks cannot be retried: it still reads the error.
    with client(stack.gateway, org) as http:
        poll = http.post(org.dif_route(), json={checksum: {"name": "hello", "chunks": []}})
    assert poll.json()[checksum]["state"] == "error"
    assert dif_answer(stack.gateway, org, checksum, chunks)["state"] == "created"
    (task,) = tasks(stack.settings, org, checksum)
    assert (task["state"], task["detail"]) == ("created", None)
    assert [request for _, request in stack.enqueued(checksum)] == [
        AssembleRequest(task["id"], org.id, checksum)
    ] * 2


def test_missing_chunks_are_reported_and_nothing_is_enqueued(stack: Stack) -> None:
    org = make_org(stack.settings)
    _, (stored_chunk,) = _stored_file(stack, org, 2500)
    absent = [sha1(os.urandom(10)), sha1(os.urandom(10))]
    checksum = sha1(b"whole")
    answer = dif_answer(stack.gateway, org, checksum, [absent[0], stored_chunk, absent[1]])
    assert answer == {"state": "not_found", "missingChunks": absent, "detail": None}
    assert dif_answer(stack.gateway, org, checksum, [])["state"] == "not_found"
    assert tasks(stack.settings, org, checksum) == []
    assert stack.enqueued(checksum) == []


def test_a_file_assembled_before_the_worker_is_ok(stack: Stack) -> None:
    org = make_org(stack.settings)
    checksum = sha1(os.urandom(100))
    record_debug_file(stack.settings, org, checksum, ["a" * 40])
    answer = dif_answer(stack.gateway, org, checksum, ["a" * 40])
    assert (answer["state"], answer["dif"]["sha1"], answer["dif"]["cpuName"]) == (
        "ok", checksum, "x86_64",
    )  # fmt: skip
    assert tasks(stack.settings, org, checksum) == []


def test_kafka_refusing_the_request_is_a_503_and_leaves_nothing_behind(stack: Stack) -> None:
    org = make_org(stack.settings)
    checksum, chunks = _stored_file(stack, org, 6000)
    unreachable = f"127.0.0.1:{free_port()}"
    gateway = GatewayProcess(
        "--topic", stack.chunk_topic, "--assemble-topic", stack.assemble_topic,
        "--produce-timeout-ms", "3000",
        env={"KAFKA_BOOTSTRAP_SERVERS": unreachable}, log_name="gateway-assemble-kafka-down",
    )  # fmt: skip
    try:
        with client(gateway, org) as http:
            response = http.post(
                org.dif_route(), json={checksum: {"name": "hello", "chunks": chunks}}
            )
        assert (response.status_code, response.json()) == (
            503, {"error": "Service temporarily unavailable, try again"},
        )  # fmt: skip
        assert gateway.metric("workers_gateway_rejections_total", reason="kafka_unavailable") == 1
        assert gateway.metric("workers_gateway_assemble_enqueued_total") == 0
    finally:
        assert gateway.stop() == 0
    assert tasks(stack.settings, org, checksum) == []
    with Redis.from_url(stack.settings.redis_url) as redis:
        assert cached_status(redis, org, "dif", checksum) is None
    # The client's retry, with Kafka back, enqueues the file.
    assert dif_answer(stack.gateway, org, checksum, chunks)["state"] == "created"
    assert len(stack.enqueued(checksum)) == 1

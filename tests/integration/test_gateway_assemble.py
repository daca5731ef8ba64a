"""Bounded assemble on the real gateway, stack and blob-ingest worker: the worst request
(many files listing the same chunks) enqueues at most its bytes bound for the assemble
worker and is answered at once with bounded memory, hostile bodies are refused without being
built, and assembles beyond the slots get 503 with Retry-After (docs/gateway.md, Bounded
assemble)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from harness.gateway import GatewayProcess, multipart_body, sha1
from harness.kafka import make_topics, unique_name
from harness.waiting import wait_for
from harness.worker_process import WorkerProcess
from tests.support.gateway_assemble import requests_on
from workers.blob_ingest.definition import DLQ_TOPIC
from workers.common.projects import create_organization
from workers.common.settings import Settings
from workers.gateway.options import CHUNK_SIZE
from workers.gateway.schema import MAX_BODY_BYTES
from workers.gateway.tokens import create_token

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
PROJECT = "native"
#: The gateway's budget here: 32 chunks of 8 MiB (the default is 8 GiB).
MAX_ASSEMBLE_BYTES = 256 * MIB
ASSEMBLE_SLOTS = 3
ASSEMBLES_PER_ORG = 2
SLOT_WAIT_MS = 1000
#: The worst request is answered well within this (it is never assembled in the request).
WORST_REQUEST_SECONDS = 30
#: What the worst request may add to the process's resident memory at its peak.
WORST_REQUEST_RSS = 160 * MIB


@dataclass(frozen=True)
class Org:
    slug: str
    id: int
    token: str


@dataclass(frozen=True)
class Stack:
    settings: Settings
    gateway: GatewayProcess
    orgs: tuple[Org, Org, Org]
    assemble_topic: str

    def client(self, org: Org) -> httpx.Client:
        headers = {"Authorization": f"Bearer {org.token}"}
        return httpx.Client(base_url=self.gateway.url, headers=headers, timeout=120)

    def owned(self, org: Org, checksums: list[str]) -> set[str]:
        with psycopg.connect(self.settings.database_url) as connection:
            rows = connection.execute(
                "SELECT b.checksum FROM blobs b JOIN blob_owners o ON o.blob_id = b.id "
                "WHERE o.organization_id = %s AND b.checksum = ANY(%s)",
                (org.id, checksums),
            ).fetchall()
        return {checksum.strip() for (checksum,) in rows}


def _org(connection: psycopg.Connection) -> Org:
    slug = f"asm-{uuid.uuid4().hex[:10]}"
    organization = create_organization(connection, slug, None)
    subprocess.run(
        [sys.executable, "-m", "workers", "projects", "create", "--org", slug, "--name", PROJECT],
        check=True,
        capture_output=True,
    )
    return Org(slug, organization.id, create_token(connection, slug, ["project:releases"]).token)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = Settings.from_env()
    topic = unique_name("gateway-assemble")
    assemble_topic = unique_name("gateway-assemble-requests")
    make_topics(settings, topic, assemble_topic, DLQ_TOPIC, partitions=1)
    storage_root = tmp_path_factory.mktemp("assemble") / "blobs"
    storage_root.mkdir()
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        orgs = (_org(connection), _org(connection), _org(connection))
    worker = WorkerProcess(
        "blob-ingest",
        "--topic", topic, "--consumer-group", topic, "--storage-url", f"file://{storage_root}",
        "--max-batch-time-ms", "50",
        log_name=f"{topic}-worker",
    )  # fmt: skip
    gateway = GatewayProcess(
        "--topic", topic, "--assemble-topic", assemble_topic,
        "--max-assemble-bytes", str(MAX_ASSEMBLE_BYTES),
        "--max-concurrent-assembles", str(ASSEMBLE_SLOTS),
        "--max-assembles-per-org", str(ASSEMBLES_PER_ORG),
        "--assemble-slot-wait-ms", str(SLOT_WAIT_MS),
        # Stalled assemble bodies hold their slots for the whole test.
        "--body-idle-timeout-ms", "120000",
        log_name=topic,
    )  # fmt: skip
    try:
        yield Stack(settings, gateway, orgs, assemble_topic)
    finally:
        assert gateway.stop() == 0
        assert worker.stop() == 0


def _bundle_path(org: Org) -> str:
    return f"/api/0/organizations/{org.slug}/artifactbundle/assemble/"


def _upload(stack: Stack, org: Org, *chunks: bytes) -> None:
    body, content_type = multipart_body([("file", sha1(data), data) for data in chunks])
    with stack.client(org) as client:
        response = client.post(
            f"/api/0/organizations/{org.slug}/chunk-upload/",
            content=body,
            headers={"Content-Type": content_type},
        )
    assert response.status_code == 200, response.text
    checksums = [sha1(data) for data in chunks]
    wait_for(lambda: stack.owned(org, checksums) == set(checksums), 60, "the chunks to be stored")


def _reset_peak_rss(gateway: GatewayProcess) -> None:
    """Start the process's high-water mark (`VmHWM`) again from its current RSS."""
    Path(f"/proc/{gateway.process.pid}/clear_refs").write_text("5")


def _enqueued(stack: Stack, org: Org) -> list[str]:
    """The checksums of the organization's files on the assemble topic, in order."""
    return [
        request.checksum
        for _, request in requests_on(stack.settings, stack.assemble_topic)
        if request.organization_id == org.id
    ]


def _states(answers: dict[str, dict[str, object]]) -> dict[str, list[int]]:
    """File indices by state, an error by the words before its detail's colon."""
    states: dict[str, list[int]] = {}
    for index, answer in enumerate(answers.values()):
        detail = str(answer["detail"] or "")
        key = str(answer["state"]) if answer["state"] != "error" else detail.split(":")[0]
        states.setdefault(key, []).append(index)
    return states


def test_the_worst_request_is_answered_within_the_bound(stack: Stack) -> None:
    """1,000 files, each listing one 8 MiB chunk 1 to 512 times: unbounded, the assemble
    worker would read 131,000 chunks (about 1 TB). What one request enqueues stays within
    the 256 MiB budget; files beyond it are answered `error`, not enqueued, and the same
    request again enqueues the next files, never one twice."""
    org = stack.orgs[0]
    chunk, other = os.urandom(CHUNK_SIZE), os.urandom(100_000)
    _upload(stack, org, chunk, other)
    x = sha1(chunk)
    # Warm up (a first assemble), then measure from here.
    with stack.client(org) as client:
        warm = client.post(
            _bundle_path(org), json={"checksum": sha1(other), "chunks": [sha1(other)]}
        )
    assert (warm.status_code, warm.json()["state"]) == (200, "created"), warm.text
    baseline = stack.gateway.rss_bytes()
    _reset_peak_rss(stack.gateway)

    files = {
        f"{index:040x}": {"name": f"f{index}", "chunks": [x] * (1 + index % 512)}
        for index in range(1000)
    }
    checksums = list(files)
    body = json.dumps(files).encode()
    assert len(body) <= MAX_BODY_BYTES

    def send() -> tuple[dict[str, list[int]], float]:
        started = time.monotonic()
        with stack.client(org) as client:
            response = client.post(
                f"/api/0/projects/{org.slug}/{PROJECT}/files/difs/assemble/",
                content=body,
                headers={"Content-Type": "application/json"},
            )
        elapsed = time.monotonic() - started
        assert response.status_code == 200, response.text[:500]
        return _states(response.json()), elapsed

    states, elapsed = send()
    peak = stack.gateway.peak_rss_bytes() - baseline
    # Lists of 1 to 7 chunks (28) fit the 32 chunks of the budget, then lists of 1 and 2
    # chunks again (the files from index 512 on); lists of more than 32 chunks never would.
    assert states == {
        "created": [*range(7), 512, 513],
        "not assembled": [*range(7, 32), *range(514, 544)],
        "file too large to assemble": [*range(32, 512), *range(544, 1000)],
    }
    assert _enqueued(stack, org)[1:] == [checksums[index] for index in states["created"]]
    spent = sum(1 + index % 512 for index in states["created"])
    assert spent * CHUNK_SIZE <= MAX_ASSEMBLE_BYTES
    assert elapsed < WORST_REQUEST_SECONDS, f"answered in {elapsed:.1f} s"
    assert peak < WORST_REQUEST_RSS, f"peak RSS grew by {peak / MIB:.1f} MiB"

    # Again: the files enqueued answer from their rows and cost nothing; the next ones fit.
    again, _ = send()
    assert again["created"] == [*range(10), 512, 513, 514]
    assert _enqueued(stack, org)[1:] == [
        checksums[index] for index in (*states["created"], 7, 8, 9, 514)
    ]
    print(
        f"worst request: {len(body) / MIB:.1f} MiB body, {elapsed:.2f} s, "
        f"peak RSS +{peak / MIB:.1f} MiB, enqueued {len(states['created'])} files"
    )


def _filling(head: bytes, item: bytes, tail: bytes) -> bytes:
    count = (MAX_BODY_BYTES - len(head) - len(tail)) // (len(item) + 1)
    return head + b",".join([item] * count) + tail


def test_hostile_bodies_are_refused_without_being_built(stack: Stack) -> None:
    """16 MiB of empty objects where checksums belong took 486 MiB to refuse before."""
    org = stack.orgs[0]
    checksum = b'"' + b"a" * 40 + b'"'
    cases = [
        (_filling(b'{"checksum": %s, "chunks": [' % checksum, b"{}", b"]}"), "each chunk must"),
        (_filling(b'{"checksum": %s, "chunks": [], "x": [' % checksum, b"[]", b"]}"), None),
        (_filling(b'{"checksum": %s, "x": ' % checksum, b"[", b""), "body is not valid JSON"),
        (b"{" * (MAX_BODY_BYTES + 1), "Request too large"),
    ]
    with stack.client(org) as client:
        client.post(_bundle_path(org), json={"checksum": "a" * 40, "chunks": []})
        baseline = stack.gateway.rss_bytes()
        _reset_peak_rss(stack.gateway)
        for body, message in cases:
            response = client.post(
                _bundle_path(org), content=body, headers={"Content-Type": "application/json"}
            )
            if message is None:
                assert response.status_code == 200, response.text
            else:
                assert response.status_code == 400, response.text
                assert response.json()["error"].startswith(message)
    peak = stack.gateway.peak_rss_bytes() - baseline
    # The body itself (16 MiB) and little else.
    assert peak < 48 * MIB, f"peak RSS grew by {peak / MIB:.1f} MiB"


def _stalled_assemble(stack: Stack, org: Org) -> socket.socket:
    """An assemble request that announces a body, sends one byte of it and stalls."""
    connection = socket.create_connection(("127.0.0.1", stack.gateway.port), timeout=30)
    connection.sendall(
        f"POST {_bundle_path(org)} HTTP/1.1\r\nHost: a\r\n"
        f"Authorization: Bearer {org.token}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n{".encode()
    )
    return connection


def _assemble_status(stack: Stack, org: Org) -> httpx.Response:
    with stack.client(org) as client:
        return client.post(_bundle_path(org), json={"checksum": "c" * 40, "chunks": []})


def _refused_with_retry_after(stack: Stack, org: Org) -> httpx.Response | None:
    response = _assemble_status(stack, org)
    return response if response.status_code == 503 else None


def test_assembles_beyond_the_slots_get_503_with_retry_after(stack: Stack) -> None:
    greedy, other, third = stack.orgs
    before = stack.gateway.metric("workers_gateway_rejections_total", reason="no_assemble_slot")
    stalled = [_stalled_assemble(stack, greedy) for _ in range(ASSEMBLES_PER_ORG)]
    try:
        # The greedy organization holds its share: its next assemble waits, then gets 503.
        refused = wait_for(
            lambda: _refused_with_retry_after(stack, greedy), 30, "the greedy org's share"
        )
        assert refused.json() == {"error": "Too many assembles in progress, try again"}
        assert int(refused.headers["retry-after"]) >= 1
        # Another organization still gets a slot.
        assert _assemble_status(stack, other).status_code == 200
        # One more stalled assemble fills the process: everyone waits, then gets 503.
        stalled.append(_stalled_assemble(stack, other))
        full = wait_for(lambda: _refused_with_retry_after(stack, third), 30, "every slot held")
        assert int(full.headers["retry-after"]) >= 1
    finally:
        for connection in stalled:
            connection.close()
    # Clients gone, their slots are free again.
    wait_for(lambda: _assemble_status(stack, third).status_code == 200, 30, "the slots to be freed")
    assert (
        stack.gateway.metric("workers_gateway_rejections_total", reason="no_assemble_slot")
        >= before + 2
    )

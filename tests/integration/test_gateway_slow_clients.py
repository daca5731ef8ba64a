"""Slow and greedy clients against the real gateway: stalled headers are cut off, stalled
bodies answered 408, one organization cannot starve another, and memory stays bounded."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psycopg
import pytest

from harness.gateway import GatewayProcess, multipart_body, sha1
from harness.kafka import make_topics, unique_name
from harness.waiting import wait_for
from workers.common.projects import create_organization
from workers.common.settings import Settings
from workers.gateway.tokens import create_token

HEADER_TIMEOUT_MS = 500
BODY_IDLE_TIMEOUT_MS = 1000
SLOT_WAIT_MS = 2000
#: A response must come well within this; a connection still silent after it hangs.
ANSWER_DEADLINE_S = 20


@dataclass(frozen=True)
class Org:
    slug: str
    token: str


@dataclass(frozen=True)
class Gateway:
    process: GatewayProcess
    greedy: Org
    other: Org

    def upload_path(self, org: Org) -> str:
        return f"/api/0/organizations/{org.slug}/chunk-upload/"


def _org(connection: psycopg.Connection) -> Org:
    slug = f"slow-{uuid.uuid4().hex[:10]}"
    create_organization(connection, slug, None)
    return Org(slug, create_token(connection, slug, ["project:releases"]).token)


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    settings = Settings.from_env()
    topic = unique_name("gateway-slow")
    make_topics(settings, topic, partitions=1)
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        greedy, other = _org(connection), _org(connection)
    process = GatewayProcess(
        "--topic", topic,
        "--max-concurrent-uploads", "2",
        "--header-timeout-ms", str(HEADER_TIMEOUT_MS),
        "--body-idle-timeout-ms", str(BODY_IDLE_TIMEOUT_MS),
        "--upload-slot-wait-ms", str(SLOT_WAIT_MS),
        log_name=topic,
    )  # fmt: skip
    try:
        yield Gateway(process, greedy, other)
    finally:
        assert process.stop() == 0


def _connect(gateway: Gateway) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", gateway.process.port), timeout=5)
    connection.settimeout(ANSWER_DEADLINE_S)
    return connection


def _answer(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (b"" if it just closes)."""
    received = bytearray()
    try:
        while piece := connection.recv(65536):
            received += piece
    except ConnectionResetError:
        pass
    return bytes(received)


def test_connections_that_never_finish_their_headers_are_closed(gateway: Gateway) -> None:
    before = gateway.process.metric("workers_gateway_rejections_total", reason="header_timeout")
    stalled = [_connect(gateway) for _ in range(20)]
    for connection in stalled:
        connection.sendall(b"POST /api/0/organizations/x/chunk-upload/ HTTP/1.1\r\nHost: a\r\n")
    for connection in stalled:
        # A timeout here (socket.timeout) would mean the connection was left open.
        assert _answer(connection) == b""
        connection.close()
    assert (
        gateway.process.metric("workers_gateway_rejections_total", reason="header_timeout")
        >= before + 20
    )


def _stalled_upload(gateway: Gateway, org: Org) -> socket.socket:
    """An upload that announces 10 MB, sends a few body bytes, and stalls."""
    connection = _connect(gateway)
    connection.sendall(
        f"POST {gateway.upload_path(org)} HTTP/1.1\r\nHost: a\r\n"
        f"Authorization: Bearer {org.token}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n"
        "Content-Length: 10000000\r\n\r\n--b\r\n".encode()
    )
    return connection


def test_stalled_uploads_of_one_organization_do_not_starve_another(gateway: Gateway) -> None:
    stalled = [_stalled_upload(gateway, gateway.greedy) for _ in range(6)]
    wait_for(
        lambda: (
            gateway.process.metric("workers_gateway_slots_in_use", kind="upload") == 1
            and gateway.process.metric("workers_gateway_slots_waiting", kind="upload") == 5
        ),
        30,
        "the greedy organization to hold its share (one of two slots), the rest waiting",
    )
    data = os.urandom(100_000)
    body, content_type = multipart_body([("file", sha1(data), data)])
    with httpx.Client(base_url=gateway.process.url, timeout=ANSWER_DEADLINE_S) as client:
        response = client.post(
            gateway.upload_path(gateway.other),
            content=body,
            headers={
                "Content-Type": content_type,
                "Authorization": f"Bearer {gateway.other.token}",
            },
        )
    assert response.status_code == 200, response.text
    # Every stalled upload is answered (none hangs): 408 for a stalled body, 503 with
    # Retry-After for one that never got a slot.
    statuses = []
    for connection in stalled:
        answer = _answer(connection)
        connection.close()
        status = int(answer.split(b" ", 2)[1])
        statuses.append(status)
        if status == 503:
            assert b"retry-after:" in answer.lower()
    assert set(statuses) <= {408, 503}
    assert 408 in statuses
    assert gateway.process.metric("workers_gateway_rejections_total", reason="body_idle_timeout")
    # Slots hold at most one request's chunks each (about 33 MiB): two slots and a baseline.
    assert gateway.process.peak_rss_bytes() < 400 * 1024 * 1024

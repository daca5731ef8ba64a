"""The chunk-upload gateway against the real stack, the real sentry-cli and a real
blob-ingest worker process."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import psycopg
import pytest
import zstandard

from harness.gateway import GatewayProcess, multipart_body, sha1
from harness.kafka import make_topics, unique_name
from harness.waiting import wait_for
from tests.support.gateway_stack import (
    Stack,
    running_stack,
)
from workers.common.kafka_offsets import high_watermarks
from workers.common.net import free_port
from workers.common.storage import FilesystemBlobStorage

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("gateway")) as running:
        yield running


def _post(
    stack: Stack,
    parts: Sequence[tuple[str, str | None, bytes]],
    token: str | None = None,
    content_encoding: str | None = None,
) -> httpx.Response:
    body, content_type = multipart_body(parts)
    headers = {"Content-Type": content_type}
    if content_encoding is not None:
        headers["Content-Encoding"] = content_encoding
    with stack.client(token or stack.org.write_token) as client:
        return client.post(stack.upload_url(), content=body, headers=headers)


def test_multi_member_gzip_and_zstd_chunks_are_stored_as_accepted(stack: Stack) -> None:
    """The gateway and blob-ingest decode with one decoder: what got 200 is persisted (a
    two-member gzip chunk was once accepted here and dead-lettered there)."""
    first, second, zstd_data = os.urandom(3000), os.urandom(4000), os.urandom(5000)
    two_members = gzip.compress(first) + b"\0\0" + gzip.compress(second)
    compressor = zstandard.ZstdCompressor()
    two_frames = compressor.compress(zstd_data[:2000]) + compressor.compress(zstd_data[2000:])
    gzip_response = _post(stack, [("file_gzip", sha1(first + second), two_members)])
    assert gzip_response.status_code == 200, gzip_response.text
    zstd_response = _post(stack, [("file", sha1(zstd_data), two_frames)], content_encoding="zstd")
    assert zstd_response.status_code == 200, zstd_response.text
    expected = {sha1(first + second): first + second, sha1(zstd_data): zstd_data}

    def both_stored() -> dict[str, str] | None:
        found = stack.owned(stack.org.id, list(expected))
        return found if len(found) == 2 else None

    owned = wait_for(both_stored, 60, "both chunks to be stored")
    storage = FilesystemBlobStorage(stack.storage_root)
    try:
        assert {checksum: storage.get(path) for checksum, path in owned.items()} == expected
    finally:
        storage.close()
    # Garbage after the last member: refused here, so never dead-lettered there.
    garbage = os.urandom(2000)
    refused = _post(stack, [("file_gzip", sha1(garbage), gzip.compress(garbage) + b"junk")])
    assert (refused.status_code, refused.json()) == (400, {"error": "Invalid gzip payload"})


def test_a_rejected_request_produces_none_of_its_chunks(stack: Stack) -> None:
    """The whole request is decoded and checked before any chunk is produced: valid chunks
    ahead of a corrupt one never reach Kafka, so nothing of a 400 is ever stored."""
    valid = [os.urandom(50_000) for _ in range(3)]
    before = high_watermarks(stack.settings, stack.topic)
    response = _post(
        stack,
        [
            *(("file", sha1(data), data) for data in valid),
            ("file_gzip", sha1(b"last"), gzip.compress(b"last")[:-4]),
        ],
    )
    assert (response.status_code, response.json()) == (400, {"error": "Invalid gzip payload"})
    # The answer comes after every produce is acknowledged: nothing can arrive later.
    assert high_watermarks(stack.settings, stack.topic) == before
    assert stack.owned(stack.org.id, [sha1(data) for data in valid]) == {}


def test_options_document(stack: Stack) -> None:
    with stack.client(stack.org.read_token) as client:
        response = client.get(stack.upload_url())
    assert response.status_code == 200
    options = response.json()
    assert options["url"] == f"organizations/{stack.org.slug}/chunk-upload/"
    assert options["chunkSize"] == 8388608
    assert options["chunkSize"] & (options["chunkSize"] - 1) == 0
    assert (options["chunksPerRequest"], options["maxRequestSize"]) == (64, 33554432)
    assert (options["maxFileSize"], options["concurrency"]) == (2**32, 8)
    assert options["hashAlgorithm"] == "sha1"
    assert options["compression"] == ["gzip", "zstd"]
    assert {"debug_files", "artifact_bundles", "artifact_bundles_v2"} <= set(options["accept"])


def test_authentication_and_permissions(stack: Stack) -> None:
    data = os.urandom(100)
    parts = [("file", sha1(data), data)]
    with stack.client(None) as client:
        missing = client.get(stack.upload_url())
    assert (missing.status_code, missing.json()["detail"]) == (
        401,
        "Authentication credentials were not provided.",
    )
    with stack.client("wgt_" + "0" * 64) as client:
        wrong = client.get(stack.upload_url())
    assert (wrong.status_code, wrong.json()) == (401, {"detail": "Invalid token"})
    assert _post(stack, parts, token="not-a-token").status_code == 401
    # A read scope reads the options but cannot upload.
    read_only = _post(stack, parts, token=stack.org.read_token)
    assert read_only.status_code == 403
    assert "permission" in read_only.json()["detail"]
    # Another organization's token is refused for this organization.
    with stack.client(stack.other.write_token) as client:
        elsewhere = client.get(stack.upload_url())
    assert elsewhere.status_code == 403
    assert "organization" in elsewhere.json()["detail"]
    assert stack.owned(stack.org.id, [sha1(data)]) == {}
    assert stack.gateway.metric("workers_gateway_rejections_total", reason="missing_scope") >= 1


def test_every_error_string_and_bounded_memory(stack: Stack) -> None:
    warm = [os.urandom(8 * MIB) for _ in range(4)]
    # Exactly the limits pass (and warm the server up to a 32 MiB request).
    assert _post(stack, [("file", sha1(d), d) for d in warm]).status_code == 200
    baseline, peak_baseline = stack.gateway.rss_bytes(), stack.gateway.peak_rss_bytes()
    bomb = gzip.compress(b"\0" * (256 * MIB), compresslevel=6)
    big = os.urandom(8 * MIB + 1)
    # 33 MiB: four full chunks and one more MiB.
    over = [os.urandom(8 * MIB) for _ in range(4)] + [os.urandom(MIB)]
    tiny = [("file", sha1(b"%d" % i), b"%d" % i) for i in range(65)]
    cases: list[tuple[Sequence[tuple[str, str | None, bytes]], str]] = [
        ([("file", sha1(big), big)], "Chunk size too large"),
        ([("file_gzip", sha1(b"bomb"), bomb)] * 3, "Chunk size too large"),
        ([("file", sha1(d), d) for d in over], "Request too large"),
        (tiny, "Too many chunks"),
        ([("file", sha1(b"something else"), b"payload")], "Checksum mismatch"),
        ([("file", None, b"payload")], "Chunk without a filename"),
        ([("file_gzip", sha1(b"x"), b"\x1f\x8b\x08\x00corrupt")], "Invalid gzip payload"),
    ]
    for parts, message in cases:
        response = _post(stack, parts)
        assert (response.status_code, response.json()) == (400, {"error": message}), message
    grown = stack.gateway.rss_bytes() - baseline
    peak_grown = stack.gateway.peak_rss_bytes() - peak_baseline
    # One 256 MiB bomb expanded, even briefly, would show in the high-water mark;
    # decompression stops at 8 MiB + 1 byte, and nothing is buffered past 32 MiB.
    assert grown < 48 * MIB, f"gateway RSS grew by {grown / MIB:.1f} MiB"
    assert peak_grown < 48 * MIB, f"gateway peak RSS grew by {peak_grown / MIB:.1f} MiB"
    # Nothing of the refused requests was accepted.
    refused = [sha1(big), sha1(b"payload"), *(sha1(d) for d in over)]
    assert stack.owned(stack.org.id, refused) == {}
    with stack.client(stack.org.write_token) as client:
        empty = client.post(stack.upload_url())
    assert (empty.status_code, empty.content) == (200, b"")


def _assemble_dif(
    stack: Stack, checksum: str, chunks: list[str], url: str | None = None
) -> dict[str, Any]:
    with stack.client(stack.org.write_token) as client:
        response = client.post(
            url or f"/api/0/projects/{stack.org.slug}/{stack.org.project}/files/difs/assemble/",
            json={checksum: {"name": "blob.bin", "chunks": chunks}},
        )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()[checksum]
    return answer


def test_assemble_reports_missing_then_created_then_the_workers_state(stack: Stack) -> None:
    pieces = [os.urandom(5000), os.urandom(7000)]
    whole = b"".join(pieces)
    checksums = [sha1(p) for p in pieces]
    first = _assemble_dif(stack, sha1(whole), checksums)
    assert (first["state"], first["missingChunks"]) == ("not_found", checksums)
    assert (
        _post(stack, [("file_gzip", sha1(p), gzip.compress(p)) for p in pieces]).status_code == 200
    )
    # Accepted chunks are never reported missing, persisted or not; once stored, the file is
    # enqueued for the assemble worker, which moves it on: random bytes are no debug file.
    after = _assemble_dif(stack, sha1(whole), checksums)
    assert (after["state"], after["missingChunks"]) == ("created", [])
    wait_for(lambda: len(stack.owned(stack.org.id, checksums)) == 2, 60, "the chunks stored")
    refused = _finished_dif(stack, sha1(whole), checksums)
    assert refused["state"] == "error"
    assert str(refused["detail"]).startswith("Invalid debug information file")
    assert _task_state(stack, sha1(whole)) == "error"
    # A file whose chunks make another sha1 is the worker's to refuse: enqueued all the same.
    wrong = sha1(b"not this file")
    assert _assemble_dif(stack, wrong, checksums)["state"] == "created"
    mismatch = _finished_dif(stack, wrong, checksums)
    assert (mismatch["state"], mismatch["detail"]) == ("error", "Reported checksum mismatch")
    # Another organization does not own these blobs.
    with stack.client(stack.other.write_token) as client:
        response = client.post(
            f"/api/0/projects/{stack.other.slug}/{stack.other.project}/files/difs/assemble/",
            json={sha1(whole): {"name": "blob.bin", "chunks": checksums}},
        )
    assert response.json()[sha1(whole)]["missingChunks"] == checksums


def _finished_dif(stack: Stack, checksum: str, chunks: list[str]) -> dict[str, Any]:
    """The file's answer once the assemble worker has finished it (`ok` or `error`)."""

    def finished() -> dict[str, Any] | None:
        answer = _assemble_dif(stack, checksum, chunks)
        return answer if answer["state"] in ("ok", "error") else None

    return wait_for(finished, 60, "the assemble worker to finish the file")


def _task_state(stack: Stack, checksum: str) -> str | None:
    with psycopg.connect(stack.settings.database_url) as connection:
        row = connection.execute(
            "SELECT state FROM assemble_tasks WHERE organization_id = %s AND checksum = %s",
            (stack.org.id, checksum),
        ).fetchone()
    return None if row is None else str(row[0])


def test_chunks_on_their_way_are_created_not_missing(stack: Stack) -> None:
    """A gateway whose topic no worker reads: accepted chunks stay `created`."""
    topic = unique_name("gateway-unread")
    make_topics(stack.settings, topic, partitions=1)
    gateway = GatewayProcess("--topic", topic, log_name=topic)
    try:
        data = os.urandom(4000)
        body, content_type = multipart_body([("file", sha1(data), data)])
        headers = {"Authorization": f"Bearer {stack.org.write_token}"}
        with httpx.Client(base_url=gateway.url, headers=headers, timeout=60) as client:
            assert (
                client.post(
                    stack.upload_url(), content=body, headers={"Content-Type": content_type}
                ).status_code
                == 200
            )
            answer = client.post(
                f"/api/0/projects/{stack.org.slug}/{stack.org.project}/files/difs/assemble/",
                json={sha1(data): {"name": "x", "chunks": [sha1(data)]}},
            ).json()[sha1(data)]
        assert (answer["state"], answer["missingChunks"]) == ("created", [])
    finally:
        assert gateway.stop() == 0


def _one_chunk_answers_503(stack: Stack, gateway: GatewayProcess, data: bytes) -> httpx.Client:
    """POST `data` as one chunk to `gateway`, expecting 503; returns the open client."""
    body, content_type = multipart_body([("file", sha1(data), data)])
    headers = {"Authorization": f"Bearer {stack.org.write_token}"}
    client = httpx.Client(base_url=gateway.url, headers=headers, timeout=60)
    with contextlib.ExitStack() as on_failure:
        on_failure.callback(client.close)
        response = client.post(
            stack.upload_url(), content=body, headers={"Content-Type": content_type}
        )
        assert response.status_code == 503, response.text
        on_failure.pop_all()
    return client


def test_kafka_down_answers_503_and_reports_nothing_accepted(stack: Stack) -> None:
    unreachable = f"127.0.0.1:{free_port()}"
    gateway = GatewayProcess(
        "--topic", stack.topic, "--produce-timeout-ms", "3000",
        env={"KAFKA_BOOTSTRAP_SERVERS": unreachable}, log_name="gateway-kafka-down",
    )  # fmt: skip
    try:
        data = os.urandom(3000)
        client = _one_chunk_answers_503(stack, gateway, data)
        try:
            answer = client.post(
                f"/api/0/projects/{stack.org.slug}/{stack.org.project}/files/difs/assemble/",
                json={sha1(data): {"name": "x", "chunks": [sha1(data)]}},
            ).json()[sha1(data)]
        finally:
            client.close()
        assert (answer["state"], answer["missingChunks"]) == ("not_found", [sha1(data)])
        assert gateway.metric("workers_gateway_chunks_accepted_total") == 0
        assert gateway.metric("workers_gateway_rejections_total", reason="kafka_unavailable") == 1
    finally:
        assert gateway.stop() == 0


def test_metrics_label_routes_by_template_not_by_path(stack: Stack) -> None:
    with stack.client(stack.org.read_token) as client:
        assert client.get(stack.upload_url()).status_code == 200
    text = stack.gateway.scrape()
    assert (
        'workers_gateway_requests_total{method="GET",'
        'route="/api/0/organizations/{org}/chunk-upload/",status="200"}'
    ) in text
    assert stack.org.slug not in text
    for name in (
        "workers_gateway_request_duration_seconds_bucket",
        "workers_gateway_chunk_bytes_accepted_total",
        "workers_gateway_produce_latency_seconds_bucket",
        "workers_gateway_assemble_total",
        "workers_gateway_assemble_enqueued_total",
        "workers_gateway_rejections_total",
    ):
        assert name in text, name


def test_assemble_never_reads_the_stored_chunks(stack: Stack) -> None:
    """The gateway enqueues; reading the chunks back is the assemble worker's work, so an
    object gone from storage does not change the answer."""
    data = os.urandom(6000)
    assert _post(stack, [("file", sha1(data), data)]).status_code == 200
    path = wait_for(lambda: stack.owned(stack.org.id, [sha1(data)]).get(sha1(data)), 60, "the blob")
    (stack.storage_root / path).unlink()
    with stack.client(stack.org.write_token) as client:
        response = client.post(
            f"/api/0/projects/{stack.org.slug}/{stack.org.project}/files/difs/assemble/",
            json={sha1(data): {"name": "x", "chunks": [sha1(data)]}},
        )
    assert (response.status_code, response.json()[sha1(data)]["state"]) == (200, "created")


def test_redis_down_after_kafka_acknowledged_is_a_503_not_a_success(stack: Stack) -> None:
    gateway = GatewayProcess(
        "--topic", stack.topic,
        env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, log_name="gateway-redis-down",
    )  # fmt: skip
    try:
        _one_chunk_answers_503(stack, gateway, os.urandom(2000)).close()
        assert gateway.metric("workers_gateway_chunks_accepted_total") == 0
    finally:
        assert gateway.stop() == 0


def test_tokens_create_prints_the_token_once_and_stores_only_its_hash(stack: Stack) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "workers", "tokens", "create", "--org", stack.org.slug,
         "--scopes", "project:read,org:read", "--name", "reader"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.startswith("wgt_")
    assert len(token.splitlines()) == 1
    assert token not in result.stderr
    with psycopg.connect(stack.settings.database_url) as connection:
        rows = connection.execute(
            "SELECT token_hash, scopes, name, token_prefix FROM api_tokens "
            "WHERE organization_id = %s AND name = 'reader'",
            (stack.org.id,),
        ).fetchall()
    assert rows == [
        (hashlib.sha256(token.encode()).hexdigest(), ["project:read", "org:read"], "reader",
         token[:12])
    ]  # fmt: skip
    with stack.client(token) as client:
        assert client.get(stack.upload_url()).status_code == 200
    refused = subprocess.run(
        [sys.executable, "-m", "workers", "tokens", "create", "--org", stack.org.slug,
         "--scopes", "project:everything"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "unknown scope" in refused.stderr


def test_a_client_that_goes_away_mid_body_is_counted_and_nothing_is_accepted(
    stack: Stack,
) -> None:
    accepted = stack.gateway.metric("workers_gateway_chunks_accepted_total")
    data = os.urandom(MIB)
    body, content_type = multipart_body([("file", sha1(data), data)])
    head = (
        f"POST {stack.upload_url()} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {stack.org.write_token}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", stack.gateway.port)) as connection:
        connection.sendall(head.encode() + body[: len(body) // 2])
    wait_for(
        lambda: stack.gateway.metric(
            "workers_gateway_rejections_total", reason="client_disconnected"
        ),
        30,
        "the disconnect to be counted",
    )
    assert stack.gateway.metric("workers_gateway_chunks_accepted_total") == accepted
    with stack.client(stack.org.read_token) as client:
        assert client.get(stack.upload_url()).status_code == 200

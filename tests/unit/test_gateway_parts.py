"""Gateway pieces without the stack: tokens, request schemas, publishers, the `dif` answer
(the options document: test_gateway_options.py)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from workers.common.assemble_requests import AssembleRequest, decode_assemble_request
from workers.common.settings import Settings, SettingsError
from workers.gateway.assemble_types import StoredDebugObject, StoredFile
from workers.gateway.dif_answer import dif_object
from workers.gateway.multipart import ReceivedChunk
from workers.gateway.publisher import (
    AcknowledgedProducer,
    AssembleRequestPublisher,
    ChunkPublisher,
    EnqueuedFile,
    PublishError,
)
from workers.gateway.schema import BadRequest, parse_bundle_request, parse_dif_request
from workers.gateway.tokens import (
    READ_SCOPES,
    WRITE_SCOPES,
    TokenError,
    TokenOwner,
    bearer_token,
    hash_token,
    parse_scopes,
)

SHA = "a" * 40


def test_public_url_setting_is_validated_and_trimmed() -> None:
    settings = Settings.from_env({"GATEWAY_PUBLIC_URL": "https://up.example.com/"})
    assert settings.gateway_public_url == "https://up.example.com"
    assert Settings.from_env({}).gateway_public_url is None
    with pytest.raises(SettingsError, match="GATEWAY_PUBLIC_URL"):
        Settings.from_env({"GATEWAY_PUBLIC_URL": "up.example.com"})


def test_tokens_scopes_and_bearer_header() -> None:
    assert hash_token("abc") == hashlib.sha256(b"abc").hexdigest()
    assert bearer_token("Bearer wgt_x") == "wgt_x"
    assert bearer_token("bearer  wgt_x ") == "wgt_x"
    for header in (None, "", "Basic abc", "Bearer", "Bearer " + "x" * 300):
        assert bearer_token(header) is None
    assert parse_scopes(["project:read, project:releases", "org:ci"]) == (
        "project:read",
        "project:releases",
        "org:ci",
    )
    with pytest.raises(TokenError, match="unknown scope"):
        parse_scopes(["project:everything"])
    with pytest.raises(TokenError, match="at least one"):
        parse_scopes([""])
    reader = TokenOwner(1, 1, "acme", frozenset({"project:read"}))
    releaser = TokenOwner(2, 1, "acme", frozenset({"project:releases"}))
    assert reader.allows(READ_SCOPES)
    assert not reader.allows(WRITE_SCOPES)
    assert releaser.allows(READ_SCOPES)
    assert releaser.allows(WRITE_SCOPES)


def test_assemble_bodies_are_validated() -> None:
    (dif,) = parse_dif_request(
        b'{"%s": {"name": "a.so", "chunks": ["%s"], "debug_id": "x"}}'
        % (SHA.encode(), SHA.encode())
    )
    assert (dif.checksum, dif.name, dif.chunks, dif.debug_id) == (SHA, "a.so", (SHA,), "x")
    bundle = parse_bundle_request(
        b'{"checksum": "%s", "chunks": [], "projects": ["web", "web"], "version": "1.0"}'
        % SHA.encode()
    )
    assert (bundle.file.checksum, bundle.projects, bundle.version, bundle.dist) == (
        SHA,
        ("web",),
        "1.0",
        None,
    )
    for body in (
        b"not json",
        b"[]",
        b'{"ABC": {"name": "a", "chunks": []}}',
        b'{"%s": {"name": "a", "chunks": ["nope"]}}' % SHA.encode(),
        b'{"%s": {"chunks": []}}' % SHA.encode(),
    ):
        with pytest.raises(BadRequest):
            parse_dif_request(body)
    with pytest.raises(BadRequest):
        parse_bundle_request(b'{"checksum": "%s", "chunks": [], "projects": [1]}' % SHA.encode())


def _stored_file(debug_object: StoredDebugObject | None) -> StoredFile:
    return StoredFile(
        id=7,
        name="hello",
        checksum=SHA,
        size=123,
        date_added=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        debug_id="c0bcc3f1-9827-fe65-3058-404b2831d9e6",
        cpu_name=None,
        debug_object=debug_object,
    )


def test_the_dif_answer_is_upstreams_serialized_debug_file() -> None:
    found = StoredDebugObject(
        id=42,
        debug_id="c0bcc3f1-9827-fe65-3058-404b2831d9e6-1",
        code_id="f1c3bcc0279865fe3058404b2831d9e64135386c",
        cpu_name="x86_64",
        object_name="hello",
        file_format="elf",
        object_kind="dbg",
        features=("debug", "symtab", "unwind"),
    )
    assert dif_object(_stored_file(found)) == {
        "id": "42",
        "uuid": "c0bcc3f1-9827-fe65-3058-404b2831d9e6",
        "debugId": "c0bcc3f1-9827-fe65-3058-404b2831d9e6-1",
        "codeId": "f1c3bcc0279865fe3058404b2831d9e64135386c",
        "cpuName": "x86_64",
        "objectName": "hello",
        "symbolType": "elf",
        "headers": {"Content-Type": "application/x-elf-binary"},
        "size": 123,
        "sha1": SHA,
        "dateCreated": "2026-01-02T03:04:05.000006Z",
        "data": {"type": "dbg", "features": ["debug", "symtab", "unwind"]},
    }
    # A file assembled before the assemble worker has no debug object: what it recorded.
    legacy = dif_object(_stored_file(None))
    assert (legacy["id"], legacy["objectName"], legacy["cpuName"]) == ("7", "hello", "unknown")
    assert legacy["debugId"] == "c0bcc3f1-9827-fe65-3058-404b2831d9e6"
    assert legacy["data"] == {"features": []}


class KafkaErrorLike:
    def __init__(self, text: str) -> None:
        self.text = text

    def str(self) -> str:
        return self.text


class FakeProducer:
    """Delivers on `poll`; the checksums in `failing` get a delivery error."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.pending: list[tuple[str, Callable[[Any, Any], None]]] = []
        self.lock = threading.Lock()

    def produce(self, topic: str, value: bytes, key: bytes, headers: Any, on_delivery: Any) -> None:
        with self.lock:
            self.pending.append((key.decode(), on_delivery))

    def poll(self, timeout: float) -> int:
        with self.lock:
            ready, self.pending = self.pending, []
        for key, callback in ready:
            callback(KafkaErrorLike("broker says no") if key in self.failing else None, None)
        threading.Event().wait(min(timeout, 0.01))
        return len(ready)

    def flush(self, timeout: float) -> int:
        return self.poll(0)


def _chunks(*names: str) -> list[ReceivedChunk]:
    return [ReceivedChunk(name, b"x", "identity", 1) for name in names]


def test_publisher_fails_the_whole_request_when_one_chunk_is_not_acknowledged() -> None:
    producer = AcknowledgedProducer(FakeProducer(failing={"b" * 40}), timeout_seconds=10)  # type: ignore[arg-type]
    publisher = ChunkPublisher(producer, "chunk-uploads")
    try:
        asyncio.run(publisher.publish(1, _chunks("a" * 40)))
        with pytest.raises(PublishError, match="1 of 3 messages not acknowledged"):
            asyncio.run(publisher.publish(1, _chunks("a" * 40, "b" * 40, "c" * 40)))
    finally:
        producer.close()


def test_assemble_requests_are_keyed_by_the_file_and_decode_as_the_contract_says() -> None:
    fake = FakeProducer(failing=set())
    sent: list[tuple[str, bytes, bytes]] = []
    produce = fake.produce

    def recording(topic: str, value: bytes, key: bytes, headers: Any, on_delivery: Any) -> None:
        sent.append((topic, key, value))
        produce(topic, value, key, headers, on_delivery)

    fake.produce = recording  # type: ignore[method-assign]
    producer = AcknowledgedProducer(fake, timeout_seconds=10)  # type: ignore[arg-type]
    try:
        files = [EnqueuedFile(5, 9, "a" * 40), EnqueuedFile(6, 9, "b" * 40)]
        asyncio.run(AssembleRequestPublisher(producer, "assemble-requests").publish(files))
    finally:
        producer.close()
    assert [(topic, key) for topic, key, _ in sent] == [
        ("assemble-requests", b"a" * 40),
        ("assemble-requests", b"b" * 40),
    ]
    assert decode_assemble_request(sent[1][2]) == AssembleRequest(6, 9, "b" * 40)


def test_publisher_gives_up_when_nothing_is_acknowledged_in_time() -> None:
    class Silent(FakeProducer):
        def poll(self, timeout: float) -> int:
            threading.Event().wait(0.01)
            return 0

    producer = AcknowledgedProducer(Silent(set()), timeout_seconds=0.2)  # type: ignore[arg-type]
    try:
        with pytest.raises(PublishError, match="in time"):
            asyncio.run(ChunkPublisher(producer, "chunk-uploads").publish(1, _chunks("a" * 40)))
    finally:
        producer.close()

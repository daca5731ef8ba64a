"""The assemble request message and the status cache's key and value."""

from __future__ import annotations

import json

import pytest

from workers.common.assemble_requests import (
    AssembleRequest,
    AssembleRequestError,
    AssembleStatus,
    assemble_request_key,
    decode_assemble_request,
    decode_status,
    encode_assemble_request,
    encode_status,
    status_key,
)

SHA1 = "a" * 40


def test_a_request_round_trips_as_the_documented_json() -> None:
    value = encode_assemble_request(7, 42, SHA1)
    assert json.loads(value) == {"task_id": 7, "organization_id": 42, "checksum": SHA1}
    assert decode_assemble_request(value) == AssembleRequest(7, 42, SHA1)
    assert assemble_request_key(SHA1) == SHA1.encode()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "no value"),
        (b"not json", "not JSON"),
        (b"[]", "Expected `object`"),
        (json.dumps({"task_id": 7, "organization_id": 42}).encode(), "checksum"),
        (json.dumps({"task_id": "7", "organization_id": 42, "checksum": SHA1}).encode(), "int"),
        (json.dumps({"task_id": 0, "organization_id": 42, "checksum": SHA1}).encode(), ">= 1"),
        (json.dumps({"task_id": 7, "organization_id": 42, "checksum": "A" * 40}).encode(), "$"),
        (
            json.dumps(
                {"task_id": 7, "organization_id": 42, "checksum": SHA1, "extra": 1}
            ).encode(),
            "extra",
        ),
    ],
)
def test_anything_else_is_refused_with_a_reason(value: bytes | None, fragment: str) -> None:
    with pytest.raises(AssembleRequestError) as raised:
        decode_assemble_request(value)
    assert fragment in raised.value.detail
    assert raised.value.reason.startswith("invalid_request: ")


def test_status_key_and_value() -> None:
    assert status_key(42, "dif", 9, SHA1) == f"assemble-status:42:dif:9:{SHA1}"
    assert status_key(42, "artifact_bundle", None, SHA1) == (
        f"assemble-status:42:artifact_bundle:0:{SHA1}"
    )
    assert json.loads(encode_status("error", "Reported checksum mismatch")) == {
        "state": "error",
        "detail": "Reported checksum mismatch",
    }
    assert json.loads(encode_status("ok")) == {"state": "ok", "detail": None}
    assert decode_status(encode_status("assembling")) == AssembleStatus("assembling")


@pytest.mark.parametrize("value", [None, b"garbage", b'{"state": "done", "detail": null}'])
def test_an_unreadable_status_is_a_miss(value: bytes | None) -> None:
    assert decode_status(value) is None

"""The assemble contract between the gateway (producer) and the assemble worker (consumer):
the request topic and its message, and the status cache both write (docs/assemble.md).

The gateway inserts the file's row into `assemble_tasks` (state `created`) and produces one
message per file to `assemble-requests`:

- key: the file's sha1 (40 lowercase hex), so one file's requests stay in order on one
  partition;
- value: JSON `{"task_id": <int>, "organization_id": <int>, "checksum": "<40 hex>"}`, nothing
  else (decoded strictly: a missing, extra or mistyped field is invalid).

The status of a file is cached in Redis for 10 minutes, as upstream caches it
(`src/sentry/tasks/assemble.py`, `set_assemble_status`): key
`assemble-status:{organization_id}:{kind}:{project_id or 0}:{checksum}`, value JSON
`{"state": "created|assembling|ok|error", "detail": <str|null>}`.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

ASSEMBLE_REQUESTS_TOPIC: Final = "assemble-requests"
#: How long a status stays cached (upstream: 10 minutes).
STATUS_TTL_SECONDS: Final = 600
STATUS_KEY_PREFIX: Final = "assemble-status"

AssembleKind = Literal["dif", "artifact_bundle"]
AssembleState = Literal["created", "assembling", "ok", "error"]

_Id = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
_Sha1 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{40}$")]


class AssembleRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One file to assemble: its `assemble_tasks` row, its organization and its sha1."""

    task_id: _Id
    organization_id: _Id
    checksum: _Sha1


class AssembleStatus(msgspec.Struct, frozen=True):
    state: AssembleState
    detail: str | None = None


class AssembleRequestError(ValueError):
    """An assemble request that cannot be decoded: `reason` is the DLQ reason."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def reason(self) -> str:
        return f"invalid_request: {self.detail}"


_REQUEST_ENCODER: Final = msgspec.json.Encoder()
_REQUEST_DECODER: Final = msgspec.json.Decoder(AssembleRequest, strict=True)
_STATUS_DECODER: Final = msgspec.json.Decoder(AssembleStatus, strict=True)


def encode_assemble_request(task_id: int, organization_id: int, checksum: str) -> bytes:
    return _REQUEST_ENCODER.encode(AssembleRequest(task_id, organization_id, checksum))


def assemble_request_key(checksum: str) -> bytes:
    """The message key: the file's sha1, so one file's requests keep their order."""
    return checksum.encode("ascii")


def decode_assemble_request(value: bytes | None) -> AssembleRequest:
    """The request in `value`; raises `AssembleRequestError` for anything else."""
    if value is None:
        raise AssembleRequestError("the message has no value")
    try:
        return _REQUEST_DECODER.decode(value)
    except msgspec.ValidationError as error:
        raise AssembleRequestError(str(error)) from None
    except msgspec.DecodeError:
        raise AssembleRequestError("the value is not JSON") from None


def status_key(organization_id: int, kind: str, project_id: int | None, checksum: str) -> str:
    return f"{STATUS_KEY_PREFIX}:{organization_id}:{kind}:{project_id or 0}:{checksum}"


def encode_status(state: AssembleState, detail: str | None = None) -> bytes:
    return _REQUEST_ENCODER.encode(AssembleStatus(state, detail))


def decode_status(value: bytes | None) -> AssembleStatus | None:
    """The cached status, or None when there is none or it is unreadable (a cache entry
    that cannot be read is a miss: the row in PostgreSQL is the truth)."""
    if value is None:
        return None
    try:
        return _STATUS_DECODER.decode(value)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None

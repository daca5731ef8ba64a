"""What `workers dlq show` prints of a message's bytes: escaped, size-capped, secrets redacted.

A header whose name suggests a credential (authorization, token, secret, password, cookie,
api key, signature, session) is shown only by its size. Token-like text anywhere (the
gateway's `wgt_` tokens, Sentry's `sntrys_`/`sntryu_` tokens, `Bearer`/`Basic` credentials,
JSON fields named like a credential, `user:password@` in URLs) is replaced by `<redacted>`
before the bytes are cut, so a token cut in half is never shown either.
"""

from __future__ import annotations

import re
from typing import Final

DEFAULT_PREVIEW_BYTES: Final = 256
REDACTED: Final = b"<redacted>"

_SECRET_HEADER_NAME: Final = re.compile(
    r"auth|token|secret|passw|cookie|api[-_]?key|credential|signature|session|private",
    re.IGNORECASE,
)
_SECRET_TEXT: Final = (
    # No word boundary before the prefix: a token glued to other bytes is still a token.
    re.compile(rb"(?:wgt|sntry[su])_[A-Za-z0-9_+/=.-]+"),
    re.compile(rb"\b(?:Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE),
    re.compile(rb"(?<=://)[^/@\s:]+:[^/@\s]+(?=@)"),
)
# `"api_token": "value"`: the value goes, the field name stays.
_SECRET_JSON_FIELD: Final = re.compile(
    rb'("[^"\\]{0,64}(?:token|secret|passw|api[-_]?key|credential|authorization)[^"\\]{0,64}"'
    rb'\s*:\s*)"(?:[^"\\]|\\.)*"',
    re.IGNORECASE,
)


def is_secret_header(name: str) -> bool:
    return _SECRET_HEADER_NAME.search(name) is not None


def redact(data: bytes) -> bytes:
    """`data` with every token-like run replaced by `REDACTED`."""
    for pattern in _SECRET_TEXT:
        data = pattern.sub(REDACTED, data)
    return _SECRET_JSON_FIELD.sub(rb'\1"<redacted>"', data)


def escape(data: bytes) -> str:
    """Printable ASCII as is (backslash doubled), every other byte as `\\xNN` (or \\n, \\t)."""
    out: list[str] = []
    for byte in data:
        if byte == 0x5C:
            out.append("\\\\")
        elif byte == 0x0A:
            out.append("\\n")
        elif byte == 0x09:
            out.append("\\t")
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def preview(data: bytes | None, limit: int = DEFAULT_PREVIEW_BYTES) -> str:
    """Redacted, escaped and cut at `limit` bytes, with the whole size when cut."""
    if data is None:
        return "(none)"
    shown = redact(data)
    if len(shown) <= limit:
        return escape(shown)
    return f"{escape(shown[:limit])}... ({len(data)} bytes in all)"


def header_preview(name: str, value: bytes | None, limit: int = DEFAULT_PREVIEW_BYTES) -> str:
    if value is not None and is_secret_header(name):
        return f"<redacted, {len(value)} bytes>"
    return preview(value, limit)

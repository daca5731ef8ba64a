"""What `workers dlq show` prints of a message's bytes: escaped, capped, never a secret."""

from __future__ import annotations

import pytest

from tests.support.dead_letters import dead_letter
from workers.dlq.preview import escape, header_preview, is_secret_header, preview, redact
from workers.dlq.show import newest, show_lines

GATEWAY_TOKEN = "wgt_" + "0123456789abcdef" * 4
SENTRY_TOKEN = "sntrys_eyJpYXQiOjE3MDAwMDAwMDB9_abcdefABCDEF0123456789"


def test_bytes_are_escaped_so_the_terminal_only_sees_printable_ascii() -> None:
    assert escape(b'ok {"a": 1}') == 'ok {"a": 1}'
    assert escape(b"\x00\x1b[31m\xff\\\n\t") == "\\x00\\x1b[31m\\xff\\\\\\n\\t"


def test_a_preview_is_capped_and_says_the_whole_size() -> None:
    assert preview(b"a" * 10, limit=10) == "a" * 10
    assert preview(b"a" * 11, limit=10) == "a" * 10 + "... (11 bytes in all)"
    assert preview(None) == "(none)"
    assert preview(b"") == ""


@pytest.mark.parametrize(
    "name",
    ["authorization", "Authorization", "x-auth-token", "api-key", "API_KEY", "cookie",
     "client-secret", "password", "x-signature", "session-id", "private-key", "credentials"],
)  # fmt: skip
def test_a_header_named_like_a_credential_shows_only_its_size(name: str) -> None:
    assert is_secret_header(name)
    assert header_preview(name, b"hunter2-hunter2") == "<redacted, 15 bytes>"


@pytest.mark.parametrize(
    "name", ["organization-id", "sha1", "content-encoding", "uploaded-at", "reason"]
)
def test_the_chunk_upload_headers_are_shown(name: str) -> None:
    assert not is_secret_header(name)
    assert header_preview(name, b"1700000000000") == "1700000000000"


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (f"token {GATEWAY_TOKEN} end".encode(), b"token <redacted> end"),
        (SENTRY_TOKEN.encode(), b"<redacted>"),
        (b"Authorization: Bearer abc.def-ghi_jkl", b"Authorization: <redacted>"),
        (b"basic dXNlcjpwYXNz", b"<redacted>"),
        (b"postgresql://workers:s3cret@db:5432/x", b"postgresql://<redacted>@db:5432/x"),
        (
            b'{"org_id": 1, "api_token": "abc\\"def", "password":"x", "name": "n"}',
            b'{"org_id": 1, "api_token": "<redacted>", "password":"<redacted>", "name": "n"}',
        ),
    ],
)
def test_token_like_text_is_redacted(data: bytes, shown: bytes) -> None:
    assert redact(data) == shown


def test_a_token_cut_by_the_cap_is_redacted_before_the_cut() -> None:
    data = b"x" * 250 + GATEWAY_TOKEN.encode()
    shown = preview(data, limit=256)
    assert "wgt_" not in shown
    assert "0123" not in shown
    assert shown.endswith(f"... ({len(data)} bytes in all)")


def test_a_shown_message_has_its_reason_origin_headers_and_preview_but_no_secret() -> None:
    letter = dead_letter(
        7,
        reason="unknown_organization: organization 42 does not exist",
        worker="blob-ingest",
        key=b"ab" * 20,
        value=b"\x89PNG" + GATEWAY_TOKEN.encode() + b"\x00" * 1000,
        headers=[("organization-id", b"42"), ("authorization", GATEWAY_TOKEN.encode())],
        original=(1, 99),
    )
    text = "\n".join(show_lines(letter, {letter.position: "produced"}, preview_bytes=32))
    assert GATEWAY_TOKEN[4:12] not in text
    assert "test-dlq:0:7  2023-11-14T22:13:20.000Z  worker=blob-ingest  replay: produced" in text
    assert "reason:   unknown_organization: organization 42 does not exist" in text
    assert "original: test-input:1:99" in text
    assert "organization-id: 42" in text
    assert "authorization: <redacted, 68 bytes>" in text
    assert "value:    1072 bytes: \\x89PNG<redacted>\\x00" in text
    assert "(1072 bytes in all)" in text


def test_show_picks_the_newest_and_prints_them_oldest_first() -> None:
    stamps = {0: 5, 1: 1, 2: 9, 3: 7, 4: None}
    letters = [dead_letter(offset, timestamp_ms=stamp) for offset, stamp in stamps.items()]
    assert [letter.position.offset for letter in newest(iter(letters), 3)] == [0, 3, 2]
    assert [letter.position.offset for letter in newest(letters, 10)] == [4, 1, 0, 3, 2]

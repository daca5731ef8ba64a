"""The token lifecycle without the stack: durations, expiry and revocation rules, the
last-used throttle, authorization outcomes, the 401/403 counter and log line, the CLI's
usage errors and list rows."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry
from starlette.requests import Request

from workers.cli import make_cli
from workers.common.durations import parse_duration
from workers.fleet import FLEET_REGISTRY_LOADER
from workers.gateway import auth
from workers.gateway.auth import AUTH_REFUSALS, AuthRefused, authorize, log_refusal
from workers.gateway.cli import LIST_HEADER, token_row
from workers.gateway.metrics import GatewayMetrics
from workers.gateway.tokens import (
    MAX_LIFETIME,
    TokenError,
    TokenInfo,
    TokenOwner,
    TokenRefusal,
    check_lifetime,
    last_used_is_stale,
    refusal_reason,
)

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
TOKEN = "wgt_" + "ab" * 32


def test_durations_are_a_whole_number_and_one_unit() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration(" 30d ") == timedelta(days=30)
    assert parse_duration("0m") == timedelta(0)


@pytest.mark.parametrize(
    "text", ["", "30", "d", "1w", "1.5h", "-1d", "+1d", "1 d", "1d2h", "1D", "\u0663d", "30dx"]
)
def test_durations_refuse_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="use a whole number and s, m, h or d"):
        parse_duration(text)


def test_durations_beyond_what_a_timedelta_holds_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="too long a duration"):
        parse_duration("9" * 12 + "d")
    with pytest.raises(ValueError, match="too long a duration"):
        parse_duration("9" * 5000 + "s")


def test_a_lifetime_is_positive_and_at_most_ten_years() -> None:
    assert check_lifetime(timedelta(seconds=1)) == timedelta(seconds=1)
    assert check_lifetime(MAX_LIFETIME) == MAX_LIFETIME
    with pytest.raises(TokenError, match="in the future"):
        check_lifetime(timedelta(0))
    with pytest.raises(TokenError, match="at most 3650d"):
        check_lifetime(MAX_LIFETIME + timedelta(seconds=1))


def test_a_revoked_token_is_refused_before_its_expiry_is_looked_at() -> None:
    later, earlier = NOW + timedelta(days=1), NOW - timedelta(days=1)
    assert refusal_reason(None, None, NOW) is None
    assert refusal_reason(None, later, NOW) is None
    assert refusal_reason(None, earlier, NOW) == "expired_token"
    # Expiry is inclusive: at `expires_at` the token is already refused.
    assert refusal_reason(None, NOW, NOW) == "expired_token"
    assert refusal_reason(earlier, None, NOW) == "revoked_token"
    assert refusal_reason(earlier, earlier, NOW) == "revoked_token"


def test_last_used_is_written_at_most_once_a_minute() -> None:
    assert last_used_is_stale(None, NOW)
    assert not last_used_is_stale(NOW, NOW)
    assert not last_used_is_stale(NOW - timedelta(seconds=59.999), NOW)
    assert last_used_is_stale(NOW - timedelta(seconds=60), NOW)
    assert last_used_is_stale(NOW - timedelta(days=3), NOW)


def test_every_refusal_is_a_401_or_a_403_with_a_detail() -> None:
    statuses = {reason: AuthRefused(reason).status for reason in AUTH_REFUSALS}
    assert statuses == {
        "unauthenticated": 401,
        "invalid_token": 401,
        "revoked_token": 401,
        "expired_token": 401,
        "wrong_organization": 403,
        "missing_scope": 403,
    }
    # A revoked token answers exactly as an unknown one.
    assert AuthRefused("revoked_token").body == AuthRefused("invalid_token").body
    assert AuthRefused("revoked_token").body == {"detail": "Invalid token"}
    assert AuthRefused("expired_token").body == {"detail": "Token expired"}


def test_authorize_names_each_refusal_and_the_token_it_concerns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def outcome(found: TokenOwner | TokenRefusal, header: str | None, org: str = "acme") -> Any:
        """What `authorize` returns, or (reason, token id) of what it raises, when the
        store answers `found`."""

        async def lookup(pool: Any, token: str) -> TokenOwner | TokenRefusal:
            assert token == TOKEN
            return found

        async def run() -> Any:
            try:
                return await authorize(pool, header, org, frozenset({"project:releases"}))
            except AuthRefused as refusal:
                return (refusal.reason, refusal.token_id)

        monkeypatch.setattr(auth, "find_token_owner", lookup)
        return asyncio.run(run())

    pool: Any = None
    releaser = TokenOwner(7, 1, "acme", frozenset({"project:releases"}))
    reader = TokenOwner(8, 1, "acme", frozenset({"project:read"}))
    bearer = f"Bearer {TOKEN}"
    assert outcome(releaser, bearer) == releaser
    assert outcome(releaser, bearer, org="ACME") == releaser
    assert outcome(releaser, None) == ("unauthenticated", None)
    assert outcome(releaser, f"Basic {TOKEN}") == ("unauthenticated", None)
    assert outcome(TokenRefusal("invalid_token", None, None), bearer) == ("invalid_token", None)
    assert outcome(TokenRefusal("revoked_token", 9, 1), bearer) == ("revoked_token", 9)
    assert outcome(TokenRefusal("expired_token", 9, 1), bearer) == ("expired_token", 9)
    assert outcome(releaser, bearer, org="other") == ("wrong_organization", 7)
    assert outcome(reader, bearer) == ("missing_scope", 8)


def _sample(registry: CollectorRegistry, status: str, reason: str) -> float | None:
    return registry.get_sample_value(
        "workers_gateway_auth_refusals_total", {"status": status, "reason": reason}
    )


def test_refusals_are_counted_by_status_and_reason_from_zero() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    for reason in AUTH_REFUSALS:
        assert _sample(registry, str(AuthRefused(reason).status), reason) == 0
    metrics.refused(AuthRefused("expired_token", 3))
    metrics.refused(AuthRefused("expired_token", 3))
    metrics.refused(AuthRefused("missing_scope", 4))
    assert _sample(registry, "401", "expired_token") == 2
    assert _sample(registry, "403", "missing_scope") == 1
    assert _sample(registry, "401", "revoked_token") == 0
    # Still counted among all rejections, as before.
    assert (
        registry.get_sample_value("workers_gateway_rejections_total", {"reason": "expired_token"})
        == 2
    )


def _request(authorization: str) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/0/organizations/acme/chunk-upload/",
        "headers": [(b"authorization", authorization.encode())],
        "client": ("192.0.2.7", 50000),
    }
    return Request(scope)


def test_a_refusal_is_one_log_line_with_the_token_id_and_never_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    route = "/api/0/organizations/{org}/chunk-upload/"
    with caplog.at_level(logging.INFO, logger="workers.gateway.auth"):
        log_refusal(AuthRefused("revoked_token", 12), route, _request(f"Bearer {TOKEN}"))
        log_refusal(AuthRefused("invalid_token"), route, _request(f"Bearer {TOKEN}"))
    revoked, unknown = caplog.records
    assert (revoked.levelno, revoked.getMessage()) == (logging.WARNING, "request refused")
    fields = vars(revoked)
    assert (fields["status"], fields["reason"], fields["token_id"]) == (401, "revoked_token", 12)
    assert (fields["route"], fields["method"], fields["client"]) == (route, "POST", "192.0.2.7")
    # No token id is said as such: the field is there, and null.
    assert vars(unknown)["token_id"] is None
    for record in caplog.records:
        assert TOKEN not in str(vars(record))
        assert TOKEN[4:] not in str(vars(record))


def test_list_rows_show_the_prefix_and_dates_never_a_secret() -> None:
    token = TokenInfo(
        token_id=5,
        name=None,
        shown_prefix=TOKEN[:12],
        scopes=("project:releases", "org:ci"),
        created_at=NOW,
        expires_at=NOW + timedelta(days=30),
        last_used_at=None,
        revoked_at=None,
    )
    assert LIST_HEADER.split("\t") == [
        "ID", "NAME", "PREFIX", "SCOPES", "CREATED", "EXPIRES", "LAST_USED", "REVOKED",
    ]  # fmt: skip
    assert token_row(token).split("\t") == [
        "5", "-", TOKEN[:12], "project:releases,org:ci", "2025-03-01T12:00:00Z",
        "2025-03-31T12:00:00Z", "-", "-",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1w", "use a whole number and s, m, h or d"),
        ("0d", "must be in the future"),
        ("3651d", "at most 3650d"),
    ],
)
def test_create_refuses_a_bad_expiry_as_a_usage_error_before_any_database_work(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    result = CliRunner().invoke(
        make_cli(FLEET_REGISTRY_LOADER),
        ["tokens", "create", "--org", "acme", "--scopes", "org:ci", "--expires-in", value],
    )
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--expires-in'" in result.output
    assert message in result.output


def test_revoke_takes_a_positive_id() -> None:
    result = CliRunner().invoke(make_cli(FLEET_REGISTRY_LOADER), ["tokens", "revoke", "abc"])
    assert result.exit_code == 2
    assert "ID" in result.output

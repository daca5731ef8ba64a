"""The token lifecycle against the real gateway process and PostgreSQL: `workers tokens
create / list / revoke`, revoked and expired tokens refused with 401, the last-used time,
and every 401/403 counted by reason and logged with the token's id."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from harness.gateway import GatewayProcess
from harness.kafka import unique_name
from harness.waiting import wait_for
from workers.common.projects import create_organization
from workers.common.settings import Settings
from workers.gateway.auth import AUTH_REFUSALS
from workers.gateway.tokens import create_token, hash_token

pytestmark = pytest.mark.integration

REFUSALS = "workers_gateway_auth_refusals_total"


@dataclass
class Gateway:
    settings: Settings
    process: GatewayProcess
    org: str
    other_org: str
    #: Every secret made here, so that no log line may contain one (nor its hash).
    secrets: list[str] = field(default_factory=list)

    def new_token(
        self,
        scopes: tuple[str, ...] = ("project:releases",),
        org: str | None = None,
        expires_in: timedelta | None = None,
    ) -> tuple[str, int]:
        with psycopg.connect(self.settings.database_url, autocommit=True) as connection:
            created = create_token(
                connection, org or self.org, scopes, "test", expires_in=expires_in
            )
        self.secrets.append(created.token)
        return created.token, created.token_id

    def options(self, token: str | None, org: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with httpx.Client(base_url=self.process.url, headers=headers, timeout=30) as client:
            return client.get(f"/api/0/organizations/{org or self.org}/chunk-upload/")

    def refusals(self) -> dict[str, float]:
        return {reason: self.process.metric(REFUSALS, reason=reason) for reason in AUTH_REFUSALS}

    def refusal_logs(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.process.log.read_text().splitlines():
            if line.startswith("{"):
                document: dict[str, Any] = json.loads(line)
                if document.get("message") == "request refused":
                    lines.append(document)
        return lines

    def token_row(self, token_id: int) -> dict[str, Any]:
        with psycopg.connect(self.settings.database_url) as connection:
            row = connection.execute(
                "SELECT date_added, expires_at, revoked_at, last_used_at FROM api_tokens "
                "WHERE id = %s",
                (token_id,),
            ).fetchone()
        assert row is not None
        return dict(zip(("created", "expires", "revoked", "last_used"), row, strict=True))

    def execute(self, sql: str, *params: object) -> None:
        with psycopg.connect(self.settings.database_url, autocommit=True) as connection:
            connection.execute(sql.encode(), params)


def _new_org(settings: Settings) -> str:
    slug = f"tok-{uuid.uuid4().hex[:10]}"
    with psycopg.connect(settings.database_url, autocommit=True) as connection:
        create_organization(connection, slug, None)
    return slug


def _org_id(settings: Settings, slug: str) -> int:
    with psycopg.connect(settings.database_url) as connection:
        row = connection.execute("SELECT id FROM organizations WHERE slug = %s", (slug,)).fetchone()
    assert row is not None
    return int(row[0])


def _workers(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers", *args], capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    settings = Settings.from_env()
    name = unique_name("gateway-tokens")
    # No request here gets as far as producing; the topic is this module's own regardless.
    process = GatewayProcess("--topic", name, log_name=name)
    started = Gateway(settings, process, _new_org(settings), _new_org(settings))
    try:
        yield started
    finally:
        assert process.stop() == 0
        log = process.log.read_text()
        for secret in started.secrets:
            assert secret not in log
            assert hash_token(secret) not in log


def _logged_refusal(gateway: Gateway, reason: str, token_id: int | None) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for line in gateway.refusal_logs():
            if line["reason"] == reason and line["token_id"] == token_id:
                return line
        return None

    return wait_for(find, 10, f"a {reason} log line for token {token_id}")


def test_a_revoked_token_gets_401_and_revoking_again_says_it_already_was(
    gateway: Gateway,
) -> None:
    token, token_id = gateway.new_token()
    assert gateway.options(token).status_code == 200
    before = gateway.refusals()

    first = _workers("tokens", "revoke", str(token_id))
    assert first.returncode == 0, first.stderr
    assert f"token {token_id} ({token[:12]}) of {gateway.org} revoked at " in first.stdout
    revoked_at = gateway.token_row(token_id)["revoked"]
    assert revoked_at is not None

    refused = gateway.options(token)
    assert (refused.status_code, refused.json()) == (401, {"detail": "Invalid token"})
    after = gateway.refusals()
    assert after["revoked_token"] == before["revoked_token"] + 1
    assert after["invalid_token"] == before["invalid_token"]
    line = _logged_refusal(gateway, "revoked_token", token_id)
    assert (line["status"], line["level"]) == (401, "warning")
    assert line["organization_id"] == _org_id(gateway.settings, gateway.org)

    again = _workers("tokens", "revoke", str(token_id))
    assert again.returncode == 0, again.stderr
    assert "was already revoked at" in again.stdout
    assert gateway.token_row(token_id)["revoked"] == revoked_at
    missing = _workers("tokens", "revoke", "999999999999")
    assert missing.returncode == 1
    assert "no token with id 999999999999" in missing.stderr


def test_an_expired_token_gets_401(gateway: Gateway) -> None:
    token, token_id = gateway.new_token(expires_in=timedelta(days=1))
    assert gateway.options(token).status_code == 200
    before = gateway.refusals()
    gateway.execute(
        "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = %s", token_id
    )
    refused = gateway.options(token)
    assert (refused.status_code, refused.json()) == (401, {"detail": "Token expired"})
    assert gateway.refusals()["expired_token"] == before["expired_token"] + 1
    assert _logged_refusal(gateway, "expired_token", token_id)["status"] == 401


def test_a_token_created_to_expire_in_a_second_stops_working_by_itself(gateway: Gateway) -> None:
    created = _workers(
        "tokens", "create", "--org", gateway.org, "--scopes", "project:read", "--expires-in", "1s"
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    gateway.secrets.append(token)
    assert " expires 20" in created.stderr
    with psycopg.connect(gateway.settings.database_url) as connection:
        row = connection.execute(
            "SELECT expires_at - date_added FROM api_tokens WHERE token_hash = %s",
            (hash_token(token),),
        ).fetchone()
    assert row == (timedelta(seconds=1),)
    wait_for(lambda: gateway.options(token).status_code == 401, 30, "the token to expire")
    assert gateway.options(token).json() == {"detail": "Token expired"}


def test_list_shows_every_token_without_secrets(gateway: Gateway) -> None:
    org = _new_org(gateway.settings)
    created = _workers(
        "tokens", "create", "--org", org, "--scopes", "project:releases org:ci",
        "--name", "ci", "--expires-in", "30d",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    kept = created.stdout.strip()
    gateway.secrets.append(kept)
    revoked, revoked_id = gateway.new_token(("project:read",), org=org)
    assert _workers("tokens", "revoke", str(revoked_id)).returncode == 0

    def listed() -> list[list[str]]:
        result = _workers("tokens", "list", "--org", org)
        assert result.returncode == 0, result.stderr
        for secret in (kept, revoked):
            assert secret not in result.stdout
            assert secret[12:] not in result.stdout
            assert hash_token(secret) not in result.stdout
        return [line.split("\t") for line in result.stdout.splitlines()]

    header, first, second = listed()
    assert header == [
        "ID", "NAME", "PREFIX", "SCOPES", "CREATED", "EXPIRES", "LAST_USED", "REVOKED",
    ]  # fmt: skip
    token_id, name, prefix, scopes, created_at, expires, last_used, revoked_at = first
    assert (name, prefix, scopes) == ("ci", kept[:12], "project:releases,org:ci")
    assert (last_used, revoked_at) == ("-", "-")
    lifetime = _parsed(expires) - _parsed(created_at)
    assert timedelta(days=30) - timedelta(seconds=1) <= lifetime <= timedelta(days=30)
    assert (second[0], second[2], second[3], second[5]) == (
        str(revoked_id),
        revoked[:12],
        "project:read",
        "-",
    )
    assert second[7] != "-"

    assert gateway.options(kept, org=org).status_code == 200
    assert listed()[1][6] != "-"
    unknown = _workers("tokens", "list", "--org", f"{org}-nope")
    assert unknown.returncode == 1
    assert "no organization" in unknown.stderr
    assert int(token_id) < revoked_id


def _parsed(moment: str) -> datetime:
    return datetime.strptime(moment, "%Y-%m-%dT%H:%M:%S%z")


def test_the_last_used_time_is_set_by_a_request_at_most_once_a_minute(gateway: Gateway) -> None:
    token, token_id = gateway.new_token()
    assert gateway.token_row(token_id)["last_used"] is None
    assert gateway.options(token).status_code == 200
    # Written before the answer was sent: no waiting needed.
    first = gateway.token_row(token_id)["last_used"]
    assert first is not None
    assert gateway.options(token).status_code == 200
    assert gateway.token_row(token_id)["last_used"] == first
    gateway.execute(
        "UPDATE api_tokens SET last_used_at = now() - interval '2 minutes' WHERE id = %s",
        token_id,
    )
    stale = gateway.token_row(token_id)["last_used"]
    assert gateway.options(token).status_code == 200
    assert gateway.token_row(token_id)["last_used"] > stale


def test_every_401_and_403_is_counted_by_reason_and_logged_with_the_token_id(
    gateway: Gateway,
) -> None:
    reader, reader_id = gateway.new_token(("project:read",))
    outsider, outsider_id = gateway.new_token(org=gateway.other_org)
    before = gateway.refusals()

    assert gateway.options(None).status_code == 401
    assert gateway.options("wgt_" + "0" * 64).status_code == 401
    assert gateway.options(outsider).status_code == 403
    with httpx.Client(base_url=gateway.process.url, timeout=30) as client:
        denied = client.post(
            f"/api/0/organizations/{gateway.org}/chunk-upload/",
            headers={"Authorization": f"Bearer {reader}"},
        )
    assert (denied.status_code, denied.json()) == (
        403,
        {"detail": "You do not have permission to perform this action."},
    )

    after = gateway.refusals()
    moved = {reason: after[reason] - before[reason] for reason in AUTH_REFUSALS}
    assert moved == {
        "unauthenticated": 1,
        "invalid_token": 1,
        "revoked_token": 0,
        "expired_token": 0,
        "wrong_organization": 1,
        "missing_scope": 1,
    }
    assert gateway.process.metric(REFUSALS, status="403", reason="missing_scope") >= 1
    # Bounded labels: only the fixed reason codes, each with its one status.
    labels = {
        (sample.split('reason="')[1].split('"')[0], sample.split('status="')[1].split('"')[0])
        for sample in gateway.process.scrape().splitlines()
        if sample.startswith(REFUSALS + "{")
    }
    assert labels == {
        ("unauthenticated", "401"),
        ("invalid_token", "401"),
        ("revoked_token", "401"),
        ("expired_token", "401"),
        ("wrong_organization", "403"),
        ("missing_scope", "403"),
    }

    for anonymous in ("unauthenticated", "invalid_token"):
        line = _logged_refusal(gateway, anonymous, None)
        assert (line["status"], line["organization_id"]) == (401, None)
    elsewhere = _logged_refusal(gateway, "wrong_organization", outsider_id)
    assert (elsewhere["status"], elsewhere["method"]) == (403, "GET")
    assert elsewhere["organization_id"] == _org_id(gateway.settings, gateway.other_org)
    assert elsewhere["route"] == "/api/0/organizations/{org}/chunk-upload/"
    scope = _logged_refusal(gateway, "missing_scope", reader_id)
    assert (scope["status"], scope["method"], scope["client"]) == (403, "POST", "127.0.0.1")
    for line in gateway.refusal_logs():
        assert "token_id" in line

"""Bearer tokens per organization, stored as sha256 hex, with Sentry's scope names
(docs/gateway.md, Tokens).

`workers tokens create --org SLUG --scopes ... [--expires-in 30d]` makes one and prints the
secret once; only its hash and first characters are kept. Which scopes each endpoint needs
follows Sentry: reading the upload options takes a read, write or release scope; uploading
and assembling take a write or release scope (`project:releases` and `org:ci` are what CI
tokens carry).

A token is refused once revoked (`workers tokens revoke ID`) or past its `expires_at`. The
lookup reads the database's clock, so every gateway process agrees on when a token expires;
it records `last_used_at` at most once a minute per token, with one conditional UPDATE.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

import psycopg
from psycopg_pool import AsyncConnectionPool

from workers.common.projects import find_organization

logger = logging.getLogger(__name__)

TOKEN_PREFIX: Final = "wgt_"  # noqa: S105 - a marker, not a secret
SHOWN_PREFIX_LENGTH: Final = 12
MAX_TOKEN_LENGTH: Final = 256
#: `--expires-in` is at most this long (and more than zero).
MAX_LIFETIME: Final = timedelta(days=3650)
#: `last_used_at` is written again only when it is older than this.
LAST_USED_RESOLUTION: Final = timedelta(minutes=1)

KNOWN_SCOPES: Final = frozenset(
    {
        "org:read",
        "org:write",
        "org:admin",
        "org:ci",
        "project:read",
        "project:write",
        "project:admin",
        "project:releases",
    }
)
#: Any of these allows `GET .../chunk-upload/`.
READ_SCOPES: Final = frozenset(KNOWN_SCOPES)
#: Any of these allows uploading chunks and assembling files.
WRITE_SCOPES: Final = frozenset(
    {"org:write", "org:admin", "org:ci", "project:write", "project:admin", "project:releases"}
)


class TokenError(ValueError):
    """A token request the token store refuses; the message says why."""


@dataclass(frozen=True)
class TokenOwner:
    token_id: int
    organization_id: int
    organization_slug: str
    scopes: frozenset[str]

    def allows(self, needed: Iterable[str]) -> bool:
        return not self.scopes.isdisjoint(needed)


#: Why a bearer token is refused: unknown, revoked, or past its expiry.
TokenRefusalReason = Literal["invalid_token", "revoked_token", "expired_token"]


@dataclass(frozen=True)
class TokenRefusal:
    reason: TokenRefusalReason
    #: Both None when no stored token has this secret.
    token_id: int | None
    organization_id: int | None


@dataclass(frozen=True)
class CreatedToken:
    token: str
    token_id: int
    organization_slug: str
    scopes: tuple[str, ...]
    expires_at: datetime | None


@dataclass(frozen=True)
class TokenInfo:
    """What `workers tokens list` shows of a token: never its secret nor its hash."""

    token_id: int
    name: str | None
    shown_prefix: str
    scopes: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class Revocation:
    token_id: int
    organization_slug: str
    shown_prefix: str
    revoked_at: datetime
    #: True when the token had been revoked before (then `revoked_at` is that first time).
    already_revoked: bool


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_scopes(raw: Iterable[str]) -> tuple[str, ...]:
    scopes: list[str] = []
    for item in raw:
        for scope in item.replace(",", " ").split():
            if scope not in KNOWN_SCOPES:
                raise TokenError(
                    f"unknown scope {scope!r}; known: {', '.join(sorted(KNOWN_SCOPES))}"
                )
            if scope not in scopes:
                scopes.append(scope)
    if not scopes:
        raise TokenError("give at least one scope, e.g. --scopes project:releases")
    return tuple(scopes)


def check_lifetime(expires_in: timedelta) -> timedelta:
    if expires_in <= timedelta(0):
        raise TokenError("an expiry must be in the future, e.g. --expires-in 30d")
    if expires_in > MAX_LIFETIME:
        raise TokenError(f"an expiry is at most {MAX_LIFETIME.days}d away")
    return expires_in


def refusal_reason(
    revoked_at: datetime | None, expires_at: datetime | None, now: datetime
) -> Literal["revoked_token", "expired_token"] | None:
    """Why a stored token is refused at `now`, or None when it is accepted."""
    if revoked_at is not None:
        return "revoked_token"
    if expires_at is not None and expires_at <= now:
        return "expired_token"
    return None


def last_used_is_stale(last_used_at: datetime | None, now: datetime) -> bool:
    """Whether a request at `now` should write `last_used_at` again."""
    return last_used_at is None or now - last_used_at >= LAST_USED_RESOLUTION


def create_token(
    connection: psycopg.Connection,
    organization_slug: str,
    scopes: Iterable[str],
    name: str | None = None,
    expires_in: timedelta | None = None,
) -> CreatedToken:
    """A new token; it expires `expires_in` after now (the database's clock), or never."""
    chosen = parse_scopes(scopes)
    lifetime = None if expires_in is None else check_lifetime(expires_in)
    organization = find_organization(connection, organization_slug)
    token = TOKEN_PREFIX + secrets.token_hex(32)
    row = connection.execute(
        "INSERT INTO api_tokens "
        "(organization_id, token_hash, token_prefix, name, scopes, expires_at) "
        "VALUES (%s, %s, %s, %s, %s, now() + %s::interval) RETURNING id, expires_at",
        (
            organization.id,
            hash_token(token),
            token[:SHOWN_PREFIX_LENGTH],
            name,
            list(chosen),
            lifetime,
        ),
    ).fetchone()
    assert row is not None
    return CreatedToken(token, int(row[0]), organization.slug, chosen, row[1])


def list_tokens(connection: psycopg.Connection, organization_slug: str) -> list[TokenInfo]:
    """Every token of the organization, oldest first, revoked and expired ones included."""
    organization = find_organization(connection, organization_slug)
    rows = connection.execute(
        "SELECT id, name, token_prefix, scopes, date_added, expires_at, last_used_at, "
        "revoked_at FROM api_tokens WHERE organization_id = %s ORDER BY id",
        (organization.id,),
    ).fetchall()
    return [
        TokenInfo(int(token_id), name, str(prefix), tuple(scopes), created, expires, used, revoked)
        for token_id, name, prefix, scopes, created, expires, used, revoked in rows
    ]


def revoke_token(connection: psycopg.Connection, token_id: int) -> Revocation:
    """Refuse the token from now on; revoking it again changes nothing and says so."""
    with connection.transaction():
        row = connection.execute(
            "SELECT t.revoked_at, o.slug, t.token_prefix FROM api_tokens t "
            "JOIN organizations o ON o.id = t.organization_id WHERE t.id = %s FOR UPDATE OF t",
            (token_id,),
        ).fetchone()
        if row is None:
            raise TokenError(f"no token with id {token_id}")
        revoked_at, slug, prefix = row
        if revoked_at is not None:
            return Revocation(token_id, str(slug), str(prefix), revoked_at, True)
        revoked = connection.execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE id = %s RETURNING revoked_at",
            (token_id,),
        ).fetchone()
    assert revoked is not None
    return Revocation(token_id, str(slug), str(prefix), revoked[0], False)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    return token


async def find_token_owner(pool: AsyncConnectionPool, token: str) -> TokenOwner | TokenRefusal:
    """The owner of an accepted token, else why it is refused. An accepted token whose
    `last_used_at` is a minute old or more gets it set to now: one small UPDATE, which only
    logs a warning if it fails (the request goes on)."""
    async with pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT t.id, t.organization_id, o.slug, t.scopes, t.revoked_at, t.expires_at, "
            "t.last_used_at, now() FROM api_tokens t "
            "JOIN organizations o ON o.id = t.organization_id WHERE t.token_hash = %s",
            (hash_token(token),),
        )
        row = await cursor.fetchone()
        if row is None:
            return TokenRefusal("invalid_token", None, None)
        token_id, organization_id, slug, scopes, revoked_at, expires_at, last_used_at, now = row
        reason = refusal_reason(revoked_at, expires_at, now)
        if reason is not None:
            return TokenRefusal(reason, int(token_id), int(organization_id))
        if last_used_is_stale(last_used_at, now):
            await _touch(connection, int(token_id))
    return TokenOwner(int(token_id), int(organization_id), str(slug), frozenset(scopes))


async def _touch(connection: psycopg.AsyncConnection[Any], token_id: int) -> None:
    # The condition repeats the staleness test, so concurrent requests (in any process)
    # write at most once per minute between them.
    try:
        await connection.execute(
            "UPDATE api_tokens SET last_used_at = now() WHERE id = %s "
            "AND (last_used_at IS NULL OR last_used_at <= now() - %s::interval)",
            (token_id, LAST_USED_RESOLUTION),
        )
    except psycopg.Error as error:
        logger.warning(
            "could not record a token's last use",
            extra={"token_id": token_id, "error_type": type(error).__name__},
        )

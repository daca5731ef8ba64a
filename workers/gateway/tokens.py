"""Bearer tokens per organization, stored as sha256 hex, with Sentry's scope names.

`workers tokens create --org SLUG --scopes ...` makes one and prints the secret once; only
its hash and first characters are kept. Which scopes each endpoint needs follows Sentry:
reading the upload options takes a read, write or release scope; uploading and assembling
take a write or release scope (`project:releases` and `org:ci` are what CI tokens carry).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from workers.common.projects import find_organization

TOKEN_PREFIX: Final = "wgt_"  # noqa: S105 - a marker, not a secret
SHOWN_PREFIX_LENGTH: Final = 12
MAX_TOKEN_LENGTH: Final = 256

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


@dataclass(frozen=True)
class CreatedToken:
    token: str
    token_id: int
    organization_slug: str
    scopes: tuple[str, ...]


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


def create_token(
    connection: psycopg.Connection,
    organization_slug: str,
    scopes: Iterable[str],
    name: str | None = None,
) -> CreatedToken:
    chosen = parse_scopes(scopes)
    organization = find_organization(connection, organization_slug)
    token = TOKEN_PREFIX + secrets.token_hex(32)
    row = connection.execute(
        "INSERT INTO api_tokens (organization_id, token_hash, token_prefix, name, scopes) "
        "VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (organization.id, hash_token(token), token[:SHOWN_PREFIX_LENGTH], name, list(chosen)),
    ).fetchone()
    assert row is not None
    return CreatedToken(token, int(row[0]), organization.slug, chosen)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    return token


async def find_token_owner(pool: AsyncConnectionPool, token: str) -> TokenOwner | None:
    async with pool.connection() as connection:
        cursor = await connection.execute(
            "SELECT t.id, t.organization_id, o.slug, t.scopes FROM api_tokens t "
            "JOIN organizations o ON o.id = t.organization_id WHERE t.token_hash = %s",
            (hash_token(token),),
        )
        row = await cursor.fetchone()
    if row is None:
        return None
    return TokenOwner(int(row[0]), int(row[1]), str(row[2]), frozenset(row[3]))

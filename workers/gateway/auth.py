"""Who may call an endpoint: a bearer token's owner, or a refusal with a fixed reason code
(docs/gateway.md, Tokens).

Every refusal is a 401 (no usable token) or a 403 (a good token without the right): one of
the `AUTH_REFUSALS` codes, so metric labels stay bounded. It is logged as one line carrying
the token's id and organization, never the token or its hash; both are null when no stored
token was identified.
"""

from __future__ import annotations

import logging
from typing import Any, Final, Literal, get_args

from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request

from workers.gateway.tokens import TokenOwner, TokenRefusal, bearer_token, find_token_owner

logger = logging.getLogger(__name__)

AuthRefusalReason = Literal[
    "unauthenticated",
    "invalid_token",
    "revoked_token",
    "expired_token",
    "wrong_organization",
    "missing_scope",
]
AUTH_REFUSALS: Final[tuple[AuthRefusalReason, ...]] = get_args(AuthRefusalReason)

# Status and `detail` per reason. A revoked token reads like an unknown one, as in Sentry,
# where a revoked token no longer exists; an expired one says so, so that CI owners know to
# replace it.
_ANSWERS: Final[dict[AuthRefusalReason, tuple[int, str]]] = {
    "unauthenticated": (401, "Authentication credentials were not provided."),
    "invalid_token": (401, "Invalid token"),
    "revoked_token": (401, "Invalid token"),
    "expired_token": (401, "Token expired"),
    "wrong_organization": (403, "This token does not belong to this organization."),
    "missing_scope": (403, "You do not have permission to perform this action."),
}


class AuthRefused(Exception):
    """A 401 or 403: the reason code, and the token's id when a stored token was found."""

    def __init__(
        self,
        reason: AuthRefusalReason,
        token_id: int | None = None,
        organization_id: int | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason: AuthRefusalReason = reason
        self.token_id = token_id
        self.organization_id = organization_id

    @property
    def status(self) -> int:
        return _ANSWERS[self.reason][0]

    @property
    def body(self) -> dict[str, Any]:
        return {"detail": _ANSWERS[self.reason][1]}


async def authorize(
    pool: AsyncConnectionPool,
    authorization: str | None,
    organization_slug: str,
    scopes: frozenset[str],
) -> TokenOwner:
    """The owner of the `Authorization` header's token if it may use any of `scopes` in the
    organization; AuthRefused otherwise."""
    token = bearer_token(authorization)
    if token is None:
        raise AuthRefused("unauthenticated")
    found = await find_token_owner(pool, token)
    if isinstance(found, TokenRefusal):
        raise AuthRefused(found.reason, found.token_id, found.organization_id)
    if found.organization_slug.lower() != organization_slug.lower():
        raise AuthRefused("wrong_organization", found.token_id, found.organization_id)
    if not found.allows(scopes):
        raise AuthRefused("missing_scope", found.token_id, found.organization_id)
    return found


def log_refusal(refusal: AuthRefused, route: str, request: Request) -> None:
    logger.warning(
        "request refused",
        extra={
            "status": refusal.status,
            "reason": refusal.reason,
            "token_id": refusal.token_id,
            "organization_id": refusal.organization_id,
            "route": route,
            "method": request.method,
            "client": request.client.host if request.client is not None else None,
        },
    )

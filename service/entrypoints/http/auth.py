"""Bearer tokens and their scopes: `read` < `write` < `admin` (CONTRACT.md, "Who did it").

Writes need `write`; reads need `read` only if STOCK_API_READS_REQUIRE_TOKEN; count
approvals and reconciliation need `admin`. A token without the scope a request needs
is `403 forbidden`; no token, or an unknown one, is `401 unauthorized`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.entrypoints.http.errors import Forbidden, Unauthorized
from service.settings import ApiToken, Settings

_bearer = HTTPBearer(auto_error=False, description="A token from STOCK_API_TOKENS.")


@dataclass(frozen=True)
class Caller:
    """Who is asking: the token's name and scope. Anonymous reads have no token."""

    token_name: str | None
    scope: str | None

    @property
    def actor(self) -> str:
        """The audit log's `actor` for what this caller changes."""
        return f"api:{self.token_name or 'anonymous'}"


ANONYMOUS = Caller(None, None)


def token_matching(presented: str, accepted: list[ApiToken]) -> ApiToken | None:
    """Compares with every accepted token in constant time, so neither the position of
    a match nor the length of a common prefix shows in the response time."""
    presented_bytes = presented.encode()
    found: ApiToken | None = None
    for token in accepted:
        if hmac.compare_digest(presented_bytes, token.secret.encode()):
            found = token
    return found


def token_is_valid(presented: str, accepted: list[str]) -> bool:
    """The secrets alone (the stream's check of a token sent as a query parameter)."""
    tokens = [ApiToken("", secret, "write") for secret in accepted]
    return token_matching(presented, tokens) is not None


def _caller(
    settings: Settings, credentials: HTTPAuthorizationCredentials | None, scope: str
) -> Caller:
    if credentials is None:
        raise Unauthorized("this request needs an `Authorization: Bearer <token>` header")
    accepted = settings.api_token_entries
    if not accepted:
        raise Unauthorized("no API tokens are configured (STOCK_API_TOKENS): writes are refused")
    token = token_matching(credentials.credentials, accepted)
    if token is None:
        raise Unauthorized("the bearer token is not valid")
    if not token.allows(scope):
        raise Forbidden(f"token {token.name!r} has scope {token.scope!r}; this needs {scope!r}")
    return Caller(token.name, token.scope)


async def require_read_token(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_bearer)
) -> Caller:
    settings: Settings = request.app.state.services.settings
    if settings.api_reads_require_token:
        return _caller(settings, credentials, "read")
    return ANONYMOUS


async def require_write_token(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_bearer)
) -> Caller:
    return _caller(request.app.state.services.settings, credentials, "write")


async def require_admin_token(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_bearer)
) -> Caller:
    return _caller(request.app.state.services.settings, credentials, "admin")


def caller_may(caller: Caller, scope: str) -> bool:
    """For a request whose need depends on its body (an approval needs `admin`)."""
    return caller.scope is not None and ApiToken("", "", caller.scope).allows(scope)


Reader = Annotated[Caller, Depends(require_read_token)]
Writer = Annotated[Caller, Depends(require_write_token)]
Admin = Annotated[Caller, Depends(require_admin_token)]

"""Bearer tokens: required for writes, for reads only if STOCK_API_READS_REQUIRE_TOKEN."""

from __future__ import annotations

import hmac

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.entrypoints.http.errors import Unauthorized
from service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="A token from STOCK_API_TOKENS.")


def token_is_valid(presented: str, accepted: list[str]) -> bool:
    """Compares with every accepted token in constant time, so neither the position of
    a match nor the length of a common prefix shows in the response time."""
    presented_bytes = presented.encode()
    matched = False
    for token in accepted:
        matched |= hmac.compare_digest(presented_bytes, token.encode())
    return matched


def _check(settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> None:
    if credentials is None:
        raise Unauthorized("this request needs an `Authorization: Bearer <token>` header")
    accepted = settings.api_token_list
    if not accepted:
        raise Unauthorized("no API tokens are configured (STOCK_API_TOKENS): writes are refused")
    if not token_is_valid(credentials.credentials, accepted):
        raise Unauthorized("the bearer token is not valid")


async def require_write_token(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_bearer)
) -> None:
    _check(request.app.state.services.settings, credentials)


async def require_read_token(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Security(_bearer)
) -> None:
    settings: Settings = request.app.state.services.settings
    if settings.api_reads_require_token:
        _check(settings, credentials)

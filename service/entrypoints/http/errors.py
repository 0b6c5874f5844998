"""Every error as `{"code", "message", "details"}`, with its status; never a trace or SQL."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.adapters.database import TransientDatabaseError, is_transient
from service.domain.errors import (
    ApprovalRequired,
    CountBelowReserved,
    CountClosed,
    CountOverlap,
    DomainError,
    IdempotencyKeyReused,
    InsufficientStock,
    InvalidCursor,
    InvalidExpiry,
    InvalidOrderedAt,
    InvalidPolicy,
    InvalidQuantity,
    NothingCounted,
    ProductMismatch,
    ReservationClosed,
    ReservationMismatch,
    UnknownCount,
    UnknownProduct,
    UnknownReservation,
    UnknownVariant,
    VariantNotInCount,
    VersionConflict,
)
from service.entrypoints.http.models import ErrorBody

log = logging.getLogger(__name__)

#: Every DomainError's status. A new error without an entry fails a test
#: (tests/unit/test_http_error_mapping.py), not a request.
STATUS_BY_CODE = {
    UnknownVariant.code: 404,
    UnknownProduct.code: 404,
    UnknownReservation.code: 404,
    UnknownCount.code: 404,
    InsufficientStock.code: 409,
    CountBelowReserved.code: 409,
    ReservationClosed.code: 409,
    ReservationMismatch.code: 409,
    ProductMismatch.code: 409,
    VersionConflict.code: 409,
    CountClosed.code: 409,
    CountOverlap.code: 409,
    NothingCounted.code: 409,
    ApprovalRequired.code: 409,
    VariantNotInCount.code: 422,
    IdempotencyKeyReused.code: 422,
    InvalidQuantity.code: 422,
    InvalidExpiry.code: 422,
    InvalidOrderedAt.code: 422,
    InvalidPolicy.code: 422,
    InvalidCursor.code: 422,
}
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


#: What each status means beside the domain errors' codes, for the OpenAPI document.
_OTHER_CODES = {
    400: "`bad_request`: a body that is not even text (invalid UTF-8).",
    401: "No valid bearer token (`unauthorized`).",
    403: "`forbidden`: the token lacks the scope this request needs.",
    413: "`payload_too_large`: the body is over STOCK_HTTP_MAX_BODY_BYTES.",
    422: "`validation_failed`: the body or a parameter breaks the schema.",
    503: "`database_unavailable`: try again.",
}


def _documented_errors() -> dict[int | str, dict[str, Any]]:
    """The error answers of every /api/inventory route, each status listing every code
    it can carry, read from STATUS_BY_CODE: a new error is documented by adding it."""
    codes: dict[int, list[str]] = {}
    for code, status in STATUS_BY_CODE.items():
        codes.setdefault(status, []).append(f"`{code}`")
    return {
        status: {
            "model": ErrorBody,
            "description": " ".join(
                part
                for part in (
                    _OTHER_CODES.get(status),
                    f"Codes: {', '.join(codes[status])}." if status in codes else None,
                )
                if part
            ),
        }
        for status in sorted({*_OTHER_CODES, *codes})
    }


class Unauthorized(Exception):
    """No bearer token, or one that is not in STOCK_API_TOKENS."""


class Forbidden(Exception):
    """A valid token without the scope the request needs."""


class TooManyStreams(Exception):
    """STOCK_STREAM_MAX_CLIENTS streams are open in this process already."""


DOCUMENTED_ERRORS = _documented_errors()
#: The writes' answers: those, and 415 for a body not sent as JSON.
WRITE_ERRORS: dict[int | str, dict[str, Any]] = dict(
    sorted(
        {
            **DOCUMENTED_ERRORS,
            415: {
                "model": ErrorBody,
                "description": "`unsupported_media_type`: the body is not sent as "
                "`Content-Type: application/json`.",
            },
        }.items(),
        key=lambda item: str(item[0]),
    )
)


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"code": code, "message": message, "details": details}, status_code=status, headers=headers
    )


def details_of(error: DomainError) -> Any:
    if isinstance(error, InsufficientStock):
        return {
            "shortages": [
                {"variantId": s.variant_id, "requested": s.requested, "available": s.available}
                for s in error.shortages
            ]
        }
    if isinstance(error, UnknownVariant):
        return {"variantIds": list(error.variant_ids)}
    if isinstance(error, UnknownReservation):
        return {"reservationIds": list(error.reservation_ids)}
    if isinstance(error, UnknownProduct):
        return {"productId": error.product_id}
    if isinstance(error, InvalidOrderedAt):
        return {"variantId": error.variant_id}
    if isinstance(error, ProductMismatch):
        return {
            "variantId": error.variant_id,
            "productId": error.product_id,
            "requestedProductId": error.named,
        }
    if isinstance(error, VersionConflict):
        return {
            "current": [{"variantId": v, "version": n} for v, n in error.current.items()]
        }
    if isinstance(error, CountBelowReserved):
        below = {
            "variantId": error.variant_id,
            "counted": error.counted,
            "reserved": error.reserved,
        }
        if error.on_hand_after is not None:
            below["onHandAfter"] = error.on_hand_after
        return below
    if isinstance(error, UnknownCount | NothingCounted):
        return {"countId": error.count_id}
    if isinstance(error, CountClosed):
        return {"countId": error.count_id, "status": error.status}
    if isinstance(error, VariantNotInCount):
        return {"countId": error.count_id, "variantIds": list(error.variant_ids)}
    if isinstance(error, CountOverlap):
        return {
            "counts": [{"variantId": v, "countId": c} for v, c in error.open_counts.items()]
        }
    if isinstance(error, ApprovalRequired):
        return {
            "countId": error.count_id,
            "lines": [
                {
                    "variantId": line.variant_id,
                    "counted": line.counted,
                    "expected": line.expected,
                    "variance": line.variance,
                    "tolerancePercent": line.tolerance_percent,
                }
                for line in error.lines
            ],
        }
    if isinstance(error, ReservationClosed):
        return {
            "reservations": [
                {"reservationId": r, "status": status} for r, status in error.statuses.items()
            ]
        }
    if isinstance(error, ReservationMismatch):
        return {
            "reservations": [
                {
                    "reservationId": r,
                    "lines": [{"variantId": v, "quantity": q} for v, q in lines.items()],
                }
                for r, lines in error.held.items()
            ]
        }
    return None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def domain_error(request: Request, error: DomainError) -> JSONResponse:
        status = STATUS_BY_CODE[error.code]
        return error_response(status, error.code, str(error), details_of(error))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        # Location, message and type of each problem; not the input (it may be huge).
        problems = [
            {"location": list(e.get("loc", ())), "message": e.get("msg"), "type": e.get("type")}
            for e in error.errors()
        ]
        first = problems[0] if problems else {"location": [], "message": "invalid request"}
        where = ".".join(str(part) for part in first["location"])
        return error_response(
            422, "validation_failed", f"{where}: {first['message']}".lstrip(": "), problems
        )

    @app.exception_handler(TooManyStreams)
    async def too_many_streams(request: Request, error: TooManyStreams) -> JSONResponse:
        return error_response(
            503,
            "too_many_streams",
            "this process serves as many streams as it may; try again later",
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Unauthorized)
    async def unauthorized(request: Request, error: Unauthorized) -> JSONResponse:
        return error_response(
            401, "unauthorized", str(error), headers={"WWW-Authenticate": "Bearer"}
        )

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, error: Forbidden) -> JSONResponse:
        return error_response(403, "forbidden", str(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(error.status_code, "http_error")
        return error_response(
            error.status_code, code, str(error.detail), headers=getattr(error, "headers", None)
        )


def unexpected_error_response(request: Request, error: Exception) -> JSONResponse:
    """An exception no handler claimed: 503 if the database is away, else 500.

    Called by the app's `Contain` middleware, so the exception ends here, answered
    and logged once, instead of reaching the server as an ASGI error.
    """
    if isinstance(error, TransientDatabaseError) or is_transient(error):
        log.warning("%s %s: database unavailable (%s)", request.method, request.url.path, error)
        return error_response(
            503,
            "database_unavailable",
            "the database is unavailable; try again shortly",
            headers={"Retry-After": "1"},
        )
    log.error("%s %s failed", request.method, request.url.path, exc_info=error)
    return error_response(500, "internal_error", "internal error; the log has the details")

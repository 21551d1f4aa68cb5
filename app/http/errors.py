"""Every error becomes {"error": {"code", "message", "details"}} with one status per type,
mapped in one dict. Nothing reaches the client as a stack trace."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import psycopg_pool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from skiplock.errors import (
    BatchNotFound,
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidInput,
    InvalidTransition,
    JobNotFound,
    QueueFull,
    QueueNotEmpty,
    QueueNotFound,
    ScheduleNotFound,
    SkiplockError,
    translate,
)

log = logging.getLogger("skiplock.http")


class Unauthorized(SkiplockError):
    """A valid bearer token is required (Authorization: Bearer <token>)."""

    code = "unauthorized"


class PayloadTooLarge(SkiplockError):
    """The request body is too large."""

    code = "payload_too_large"


STATUS: dict[type[SkiplockError], int] = {
    InvalidInput: 422,
    JobNotFound: 404,
    InvalidTransition: 409,
    IdempotencyConflict: 409,
    QueueFull: 429,
    QueueNotFound: 404,
    QueueNotEmpty: 409,
    ScheduleNotFound: 404,
    BatchNotFound: 404,
    DatabaseUnavailable: 503,
    Unauthorized: 401,
    PayloadTooLarge: 413,
}

RETRY_AFTER = {QueueFull: "5", DatabaseUnavailable: "5"}


def error_response(status: int, code: str, message: str, details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details or {}}}, status_code=status,
                        headers=headers)


def status_of(exc: SkiplockError) -> int:
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


async def skiplock_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SkiplockError)
    if type(exc) is SkiplockError and isinstance(exc.__cause__, psycopg.DataError):
        exc = _bad_data(exc.__cause__)
    status = status_of(exc)
    headers = {"Retry-After": RETRY_AFTER[type(exc)]} if type(exc) in RETRY_AFTER else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(status, exc.code, exc.message, exc.details, headers)


async def database_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg.OperationalError):
        log.warning("database unavailable: %s", exc)
        return await skiplock_error(request, DatabaseUnavailable("the database is unavailable; retry later"))
    if isinstance(exc, psycopg.DataError):
        return await skiplock_error(request, _bad_data(exc))
    assert isinstance(exc, psycopg.Error)
    return await skiplock_error(request, translate(exc))


def _bad_data(exc: psycopg.DataError) -> SkiplockError:
    """A value PostgreSQL cannot hold (SQLSTATE class 22, or refused by psycopg before sending,
    such as a NUL character): the client's input, not a server fault. Routes validate what
    they can first, so that the 422 names the field; this is the net under them."""
    translated = translate(exc)
    if isinstance(translated, InvalidInput):
        return translated
    diag = getattr(exc, "diag", None)
    return InvalidInput((diag.message_primary if diag else None) or str(exc))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    headers = dict(exc.headers) if exc.headers else {}
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail),
                          headers=headers or None)


async def unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", "internal error; see the server log",
                          {"request_id": getattr(request.state, "request_id", None)})


HANDLERS: dict[Any, Any] = {
    SkiplockError: skiplock_error,
    psycopg.Error: database_error,
    psycopg_pool.PoolTimeout: database_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}

"""Every HTTP error is JSON: {"error": {code, message, sqlstate, hint?, details?}}.

Only `SqlgateError`s carry their message (built from query text and public metadata). Any
other exception becomes a generic 500 whose body never includes the exception's text, which
could quote data values.
"""
from __future__ import annotations

import json
import logging
import math
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from sqlgate.errors import SqlgateError

_log = logging.getLogger("sqlgate.http")

AUTH_CHALLENGE = 'Bearer realm="sqlgate", Basic realm="sqlgate", charset="UTF-8"'

_HTTP_CODES = {
    400: ("bad_request", "08P01"), 401: ("authentication_failed", "28P01"),
    403: ("permission_denied", "42501"), 404: ("not_found", "42704"),
    405: ("method_not_allowed", "0A000"), 406: ("not_acceptable", "0A000"),
    409: ("conflict", "55000"), 411: ("length_required", "08P01"),
    413: ("limit_exceeded", "54000"), 415: ("unsupported_media_type", "0A000"),
    429: ("too_many_requests", "53300"),
}


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_response(body: Any, status: int = 200, headers: dict | None = None) -> Response:
    data = json.dumps(_finite(body), separators=(",", ":"), default=str, allow_nan=False)
    return Response(data.encode(), status_code=status, headers=headers,
                    media_type="application/json")


def error_body(err: SqlgateError) -> dict:
    return {"error": err.to_dict()}


def error_response(exc: BaseException) -> Response:
    if isinstance(exc, SqlgateError):
        headers = {"WWW-Authenticate": AUTH_CHALLENGE} if exc.http_status == 401 else None
        return json_response(error_body(exc), exc.http_status, headers)
    if isinstance(exc, HTTPException):
        return http_exception_response(exc.status_code, exc.headers)
    _log.error("unexpected %s in an HTTP handler (text withheld)", type(exc).__name__)
    return json_response({"error": {"code": "internal_error", "sqlstate": "XX000",
                                    "message": "internal error; details are withheld"}}, 500)


def http_exception_response(status: int, headers: dict | None = None) -> Response:
    code, sqlstate = _HTTP_CODES.get(status, ("http_error", "XX000"))
    messages = {404: "no such route", 405: "method not allowed on this route"}
    message = messages.get(status, f"HTTP {status}")
    return json_response({"error": {"code": code, "sqlstate": sqlstate, "message": message}},
                         status, dict(headers or {}) or None)


async def handle_http_exception(request: Request, exc: HTTPException) -> Response:
    return http_exception_response(exc.status_code, exc.headers)


async def handle_sqlgate_error(request: Request, exc: SqlgateError) -> Response:
    return error_response(exc)


async def handle_any(request: Request, exc: Exception) -> Response:
    return error_response(exc)

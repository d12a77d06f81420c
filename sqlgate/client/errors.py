"""Server JSON errors as the same typed exceptions the gateway raises (`sqlgate.errors`).

`{"error": {"code", "message", "sqlstate", "hint"?, "details"?}}` becomes the SqlgateError
subclass with that code (BudgetExhausted, PolicyRefused...), so client code catches exactly
what embedded code catches. Codes this client does not know still raise a SqlgateError that
carries the server's code and SQLSTATE.
"""
from __future__ import annotations

from typing import Any

from sqlgate import errors as _errors
from sqlgate.errors import SqlgateError


class ConnectionFailed(SqlgateError):
    """The server could not be reached or did not answer with sqlgate's JSON."""

    code = "connection_failed"
    sqlstate = "08006"
    http_status = 503


class ResultGone(SqlgateError):
    """An approved request's result was already fetched (results are released once)."""

    code = "result_gone"
    sqlstate = "55000"
    http_status = 410


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


def _classes_by_code() -> dict[str, type[SqlgateError]]:
    table: dict[str, type[SqlgateError]] = {}
    # Only the public error module's classes (and ours), not subclasses other code defined.
    for cls in [*_subclasses(SqlgateError)]:
        if cls.__module__ in (_errors.__name__, __name__) and "code" in cls.__dict__:
            table.setdefault(cls.code, cls)
    return table


def error_from_json(body: Any, http_status: int) -> SqlgateError:
    """The typed exception for a server error body (or a generic one if it is not JSON)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        exc = ConnectionFailed(f"the server answered HTTP {http_status} without a sqlgate "
                               f"error body")
        exc.http_status = http_status
        return exc
    code = str(error.get("code") or "internal_error")
    message = str(error.get("message") or code)
    cls = _classes_by_code().get(code, SqlgateError)
    exc = cls.__new__(cls)
    # Bypass subclass constructors with other signatures (MetadataError(field, message)).
    SqlgateError.__init__(exc, message, hint=error.get("hint"),
                          details=error.get("details") or None)
    if cls is SqlgateError or cls.code != code:
        exc.code = code
    if error.get("sqlstate"):
        exc.sqlstate = str(error["sqlstate"])
    exc.http_status = http_status
    if isinstance(exc, _errors.MetadataError):
        exc.field = (error.get("details") or {}).get("field", "")
    return exc

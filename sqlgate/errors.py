"""Errors every layer raises and every front end maps to its own wire format.

Each error carries a stable machine code (used in HTTP JSON bodies), a PostgreSQL
SQLSTATE (used over PG wire) and an HTTP status. Messages are built only from the
query text and public metadata, never from data values (privacy rule 6), so they can be
shown to analysts as they are.
"""
from __future__ import annotations


class SqlgateError(Exception):
    code = "internal_error"
    sqlstate = "XX000"
    http_status = 500

    def __init__(self, message: str, *, hint: str | None = None, details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        # Public, non-data facts a client may act on (e.g. remaining budget).
        self.details = dict(details or {})

    def to_dict(self) -> dict:
        body = {"code": self.code, "sqlstate": self.sqlstate, "message": self.message}
        if self.hint:
            body["hint"] = self.hint
        if self.details:
            body["details"] = self.details
        return body


class SqlSyntaxError(SqlgateError):
    code = "syntax_error"
    sqlstate = "42601"
    http_status = 400


class UnsupportedQuery(SqlgateError):
    code = "unsupported"
    sqlstate = "0A000"
    http_status = 400


class PolicyRefused(SqlgateError):
    """The query is well formed but would break a privacy rule."""

    code = "refused_by_policy"
    sqlstate = "42501"
    http_status = 403


class ReadOnlyViolation(SqlgateError):
    code = "read_only"
    sqlstate = "25006"
    http_status = 403


class UndefinedTable(SqlgateError):
    code = "undefined_table"
    sqlstate = "42P01"
    http_status = 404


class UndefinedColumn(SqlgateError):
    code = "undefined_column"
    sqlstate = "42703"
    http_status = 400


class BudgetExhausted(SqlgateError):
    code = "budget_exhausted"
    sqlstate = "53400"
    http_status = 402


class InvalidParameter(SqlgateError):
    code = "invalid_parameter"
    sqlstate = "22023"
    http_status = 400


class MetadataError(SqlgateError):
    """Invalid dataset metadata; the message names the offending field."""

    code = "invalid_metadata"
    sqlstate = "22023"
    http_status = 400

    def __init__(self, field: str, message: str):
        super().__init__(f"metadata field '{field}': {message}", details={"field": field})
        self.field = field


class DataLoadError(SqlgateError):
    code = "invalid_data"
    sqlstate = "22000"
    http_status = 400


class ExecutionFailed(SqlgateError):
    """The engine failed while running bounded SQL.

    The engine's own message is withheld because it may quote data values.
    """

    code = "execution_failed"
    sqlstate = "XX000"
    http_status = 500

    def __init__(self, message: str = "the query failed while running on private data; "
                 "engine details are withheld because they may contain private values"):
        super().__init__(message)


class QueryCanceled(SqlgateError):
    code = "query_canceled"
    sqlstate = "57014"
    http_status = 408


class AuthenticationFailed(SqlgateError):
    code = "authentication_failed"
    sqlstate = "28P01"
    http_status = 401


class PermissionDenied(SqlgateError):
    code = "permission_denied"
    sqlstate = "42501"
    http_status = 403


class NotFound(SqlgateError):
    code = "not_found"
    sqlstate = "42704"
    http_status = 404


class Conflict(SqlgateError):
    code = "conflict"
    sqlstate = "55000"
    http_status = 409


class TooManyRequests(SqlgateError):
    code = "too_many_requests"
    sqlstate = "53300"
    http_status = 429


class LimitExceeded(SqlgateError):
    code = "limit_exceeded"
    sqlstate = "54000"
    http_status = 413

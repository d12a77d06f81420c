"""sqlgate errors as Trino `QueryError` objects.

Names and codes follow Trino's StandardErrorCode so BI tools show familiar errors; the
privacy budget has no Trino equivalent and uses the connector range (0x0100_0000+).
Messages are the sqlgate messages (public facts only); anything that is not a SqlgateError
becomes a generic internal error, because its text could quote private values.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlgate.errors import SqlgateError


@dataclass(frozen=True)
class TrinoErrorCode:
    name: str
    code: int
    type: str   # USER_ERROR | INTERNAL_ERROR | INSUFFICIENT_RESOURCES | EXTERNAL


GENERIC_USER_ERROR = TrinoErrorCode("GENERIC_USER_ERROR", 0, "USER_ERROR")
SYNTAX_ERROR = TrinoErrorCode("SYNTAX_ERROR", 1, "USER_ERROR")
USER_CANCELED = TrinoErrorCode("USER_CANCELED", 3, "USER_ERROR")
PERMISSION_DENIED = TrinoErrorCode("PERMISSION_DENIED", 4, "USER_ERROR")
NOT_FOUND = TrinoErrorCode("NOT_FOUND", 5, "USER_ERROR")
NOT_SUPPORTED = TrinoErrorCode("NOT_SUPPORTED", 13, "USER_ERROR")
INVALID_SESSION_PROPERTY = TrinoErrorCode("INVALID_SESSION_PROPERTY", 14, "USER_ERROR")
READ_ONLY_VIOLATION = TrinoErrorCode("READ_ONLY_VIOLATION", 23, "USER_ERROR")
CATALOG_NOT_FOUND = TrinoErrorCode("CATALOG_NOT_FOUND", 44, "USER_ERROR")
SCHEMA_NOT_FOUND = TrinoErrorCode("SCHEMA_NOT_FOUND", 45, "USER_ERROR")
TABLE_NOT_FOUND = TrinoErrorCode("TABLE_NOT_FOUND", 46, "USER_ERROR")
COLUMN_NOT_FOUND = TrinoErrorCode("COLUMN_NOT_FOUND", 47, "USER_ERROR")
INVALID_PARAMETER_USAGE = TrinoErrorCode("INVALID_PARAMETER_USAGE", 80, "USER_ERROR")
GENERIC_INTERNAL_ERROR = TrinoErrorCode("GENERIC_INTERNAL_ERROR", 65536, "INTERNAL_ERROR")
GENERIC_INSUFFICIENT_RESOURCES = TrinoErrorCode("GENERIC_INSUFFICIENT_RESOURCES", 131072,
                                                "INSUFFICIENT_RESOURCES")
QUERY_QUEUE_FULL = TrinoErrorCode("QUERY_QUEUE_FULL", 131074, "INSUFFICIENT_RESOURCES")
EXCEEDED_TIME_LIMIT = TrinoErrorCode("EXCEEDED_TIME_LIMIT", 131075, "INSUFFICIENT_RESOURCES")
EXCEEDED_PRIVACY_BUDGET = TrinoErrorCode("EXCEEDED_PRIVACY_BUDGET", 0x0100_0001,
                                         "INSUFFICIENT_RESOURCES")

_BY_SQLGATE_CODE = {
    "syntax_error": SYNTAX_ERROR,
    "unsupported": NOT_SUPPORTED,
    "refused_by_policy": PERMISSION_DENIED,
    "permission_denied": PERMISSION_DENIED,
    "read_only": READ_ONLY_VIOLATION,
    "undefined_table": TABLE_NOT_FOUND,
    "undefined_column": COLUMN_NOT_FOUND,
    "not_found": NOT_FOUND,
    "budget_exhausted": EXCEEDED_PRIVACY_BUDGET,
    "query_canceled": USER_CANCELED,
    "too_many_requests": QUERY_QUEUE_FULL,
    "limit_exceeded": GENERIC_INSUFFICIENT_RESOURCES,
    "execution_failed": GENERIC_INTERNAL_ERROR,
    "internal_error": GENERIC_INTERNAL_ERROR,
}


class TrinoError(SqlgateError):
    """An error of the Trino front end itself (session properties, catalogs, prepared
    statements), with the Trino error code it answers with."""

    code = "invalid_parameter"
    sqlstate = "22023"
    http_status = 400

    def __init__(self, trino_code: TrinoErrorCode, message: str):
        super().__init__(message)
        self.trino_code = trino_code


def trino_code_for(error: BaseException) -> TrinoErrorCode:
    if isinstance(error, TrinoError):
        return error.trino_code
    if isinstance(error, SqlgateError):
        return _BY_SQLGATE_CODE.get(error.code, GENERIC_USER_ERROR
                                    if error.http_status < 500 else GENERIC_INTERNAL_ERROR)
    return GENERIC_INTERNAL_ERROR


def query_error(error: BaseException) -> dict:
    """The `error` object of a failed QueryResults document."""
    code = trino_code_for(error)
    if isinstance(error, SqlgateError):
        text = error.message
        if error.hint:
            text += f" (hint: {error.hint})"
        sqlstate, sqlgate_code = error.sqlstate, error.code
    else:
        text = "internal error; details are withheld because they may contain private values"
        sqlstate, sqlgate_code = "XX000", "internal_error"
    message = f"{text} [sqlgate {sqlgate_code}, SQLSTATE {sqlstate}]"
    body = {
        "message": message,
        "sqlState": sqlstate,
        "errorCode": code.code,
        "errorName": code.name,
        "errorType": code.type,
        "failureInfo": {"type": f"io.sqlgate.{sqlgate_code}", "message": message,
                        "suppressed": [], "stack": []},
    }
    if isinstance(error, SqlgateError) and error.details:
        body["failureInfo"]["details"] = error.details
    return body

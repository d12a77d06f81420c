"""Federation errors, and domain errors carried back to the router's caller.

A domain's error body is already public (sqlgate errors never contain data values); the
router re-raises it as the same error class, prefixed with the domain's name, so an analyst
sees e.g. `budget_exhausted` with the domain that refused.
"""
from __future__ import annotations

from typing import Any, Mapping

from sqlgate import errors as E


class FederationFailed(E.SqlgateError):
    """A domain could not take part (down, timed out, misconfigured): nothing is released."""

    code = "federation_failed"
    sqlstate = "08006"
    http_status = 502


class FederationMismatch(E.SqlgateError):
    """Domains disagree on the dataset schema or the federation settings."""

    code = "federation_mismatch"
    sqlstate = "42P17"
    http_status = 409


_BY_CODE: dict[str, type[E.SqlgateError]] = {}
for _cls in (E.SqlSyntaxError, E.UnsupportedQuery, E.PolicyRefused, E.ReadOnlyViolation,
             E.UndefinedTable, E.UndefinedColumn, E.BudgetExhausted, E.InvalidParameter,
             E.DataLoadError, E.ExecutionFailed, E.QueryCanceled, E.AuthenticationFailed,
             E.PermissionDenied, E.NotFound, E.Conflict, E.LimitExceeded, FederationFailed,
             FederationMismatch):
    _BY_CODE[_cls.code] = _cls


def error_from_body(domain: str, body: Mapping[str, Any] | None, status: int) -> E.SqlgateError:
    """Rebuild a domain's error (JSON `{"error": {...}}`) as a local SqlgateError."""
    error = (body or {}).get("error") if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        return FederationFailed(f"domain '{domain}' answered with HTTP status {status}; "
                                "nothing was released")
    code = str(error.get("code", ""))
    message = f"domain '{domain}': {error.get('message', 'failed')}"
    cls = _BY_CODE.get(code)
    details = dict(error.get("details") or {})
    details["domain"] = domain
    if cls is None or cls in (E.DataLoadError,):
        err = FederationFailed(message, details=details)
    elif cls is E.ExecutionFailed:
        err = E.ExecutionFailed(message)
        err.details = details
    else:
        err = cls.__new__(cls)
        E.SqlgateError.__init__(err, message, hint=error.get("hint"), details=details)
    if code == "authentication_failed":
        # The router's own credentials were refused: that is a federation fault, not the
        # analyst's, and must not look like the analyst's login failed.
        err = FederationFailed(f"domain '{domain}' refused the router's credentials",
                               details={"domain": domain})
    return err

"""The audit record of a catalog statement (PG wire, Trino): one per executed statement,
action "catalog", its decision and row count, never its result values.

Catalog answers are public metadata and spend no budget, but who browsed what is an audit
fact like a DP query, so both SQL front ends record them the same way.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from server.audit import decision_for

ACTION = "catalog"


@contextmanager
def audited_catalog(service, caller, sql: str) -> Iterator[dict[str, Any]]:
    """Run a catalog statement inside; set `fields["rows_out"]` to its row count. The record
    is written whatever the outcome (an error propagates after it)."""
    fields: dict[str, Any] = {}
    try:
        yield fields
    except Exception as exc:
        decision, code = decision_for(exc)
        service.record(caller, ACTION, decision, query=sql, code=code)
        raise
    service.record(caller, ACTION, "ok", query=sql, rows_out=fields.get("rows_out"))

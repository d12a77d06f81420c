"""Running approved requests, and dry runs on mock data.

* `approve` checks that a runner exists for the request's kind BEFORE moving it out of
  `pending` (a training request on a server without torch_bridge stays pending), then marks
  it approved -> running and calls the runner.
* The built-in runners answer exact and sample requests with `Gateway.run_exact`; the result
  is stored for one fetch by the requesting analyst.
* `mock_run` runs a request's SQL on mock tables generated from metadata alone, in a
  throwaway in-memory gateway: the owner sees what the query does without any real row.
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING

from server.requests import ApprovalRequest
from sqlgate.errors import InvalidParameter, SqlgateError
from sqlgate.metadata import DatasetMeta
from sqlgate.mock import mock_table
from sqlgate.results import ExactResult

if TYPE_CHECKING:
    from server.state import RequestExecutor, ServerState

DEFAULT_SAMPLE_ROWS = 100
RESULT_CONTENT_TYPE = "application/json"
_WITHHELD = "the request failed while running; engine details are withheld because they may " \
            "contain private values"


class RunnerUnavailable(SqlgateError):
    code = "runner_unavailable"
    sqlstate = "55000"
    http_status = 503


def builtin_executors() -> dict[str, "RequestExecutor"]:
    return {"exact": run_exact_request, "sample": run_sample_request}


def sample_rows(spec: dict | None, limit: int) -> int:
    """Rows of a sample request: `spec.rows`, default 100, at most the server's limit."""
    rows = (spec or {}).get("rows", min(DEFAULT_SAMPLE_ROWS, limit))
    if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= limit:
        raise InvalidParameter(f"spec.rows must be an integer between 1 and {limit}")
    return rows


def approve(state: "ServerState", request_id: str, reviewer: str, reason: str) -> ApprovalRequest:
    request = state.requests.get(request_id)
    runner = state.executors.get(request.kind)
    if runner is None:
        raise RunnerUnavailable(f"this server has no runner for '{request.kind}' requests; the "
                                f"request stays pending",
                                hint="install and register the runner (e.g. torch_bridge for "
                                     "training), then approve again")
    state.requests.approve(request_id, reviewer, reason)
    running = state.requests.start(request_id)
    try:
        runner(state, running)
    except Exception:
        # The runner's own exception text could quote data: store a generic failure.
        current = state.requests.get(request_id)
        if current.status in ("approved", "running"):
            state.requests.fail(request_id, "execution_failed", _WITHHELD)
    return state.requests.get(request_id)


def run_exact_request(state: "ServerState", request: ApprovalRequest) -> None:
    _run_rows(state, request, state.config.exact_row_limit)


def run_sample_request(state: "ServerState", request: ApprovalRequest) -> None:
    _run_rows(state, request, sample_rows(request.spec, state.config.sample_row_limit))


def _run_rows(state: "ServerState", request: ApprovalRequest, row_limit: int) -> None:
    try:
        result = state.gateway.run_exact(request.sql, request.dataset, row_limit=row_limit)
    except SqlgateError as err:
        # Gateway errors are built from the query and public metadata only.
        state.requests.fail(request.id, err.code, err.message)
        return
    except Exception:
        state.requests.fail(request.id, "execution_failed", _WITHHELD)
        return
    state.requests.finish(request.id, exact_result_bytes(result), RESULT_CONTENT_TYPE,
                          result_summary(result))


def exact_result_bytes(result: ExactResult) -> bytes:
    return json.dumps(result.to_dict(), separators=(",", ":")).encode()


def result_summary(result: ExactResult) -> dict:
    """Public facts about a stored result (shown to owners and in the audit log)."""
    return {"rows": len(result.rows), "columns": list(result.columns),
            "truncated": result.truncated}


def mock_run(meta: DatasetMeta, sql: str, *, rows: int, row_limit: int,
             statement_timeout_s: float = 30.0) -> ExactResult:
    """Run `sql` on mock tables of `meta` in a throwaway sandboxed engine."""
    from sqlgate.gateway import Gateway

    tables = {name: replace(t, source=None) for name, t in meta.tables.items()}
    sandbox_meta = replace(meta, tables=tables)
    sources = {name: mock_table(t, rows=rows, seed=0) for name, t in tables.items()}
    with Gateway(threads=1, statement_timeout_s=statement_timeout_s) as sandbox:
        sandbox.add_dataset(sandbox_meta, sources)
        return sandbox.run_exact(sql, sandbox_meta.name, row_limit=row_limit)

"""`/v1/query`, `/v1/explain`, `/v1/describe`: DP answers, their cost, their shape.

All three go through `GatewayService`, which scopes the SQL to the caller's grants, limits
concurrency and writes the audit record (with the rewritten SQL and cost). `/v1/query` is
cancelled when its client disconnects.
"""
from __future__ import annotations

import functools
import threading

from starlette.concurrency import run_in_threadpool
from starlette.routing import Route

from server.http.endpoint import Call, endpoint, run_until_disconnect
from server.http.output import choose_format, render


def _epsilon(call: Call) -> float | None:
    return call.field("epsilon", (int, float), required=False)


async def query(call: Call):
    sql = call.field("sql")
    epsilon = _epsilon(call)
    fmt = choose_format(call.request, call.field("format", str, required=False)
                        or call.query("format"))
    call.audited = True
    # A client that goes away cancels its query: before the charge nothing is spent (the
    # service audits it as query_canceled); after the charge the charge stands (rule 4).
    cancel = threading.Event()
    result = await run_until_disconnect(call.request, cancel, functools.partial(
        call.state.service.query, call.caller, sql, epsilon=epsilon, cancel=cancel))
    return await run_in_threadpool(render, result, fmt)


def explain(call: Call):
    sql = call.field("sql")
    epsilon = _epsilon(call)
    call.audited = True
    return call.state.service.explain(call.caller, sql, epsilon=epsilon).to_dict()


def describe(call: Call):
    sql = call.field("sql")
    call.audit.update(query=sql)
    columns = call.state.service.describe(call.caller, sql)
    return {"columns": [c.to_dict() for c in columns]}


def routes() -> list[Route]:
    return [
        Route("/v1/query", endpoint("query", query, json_body=True), methods=["POST"]),
        Route("/v1/explain", endpoint("explain", explain, json_body=True), methods=["POST"]),
        Route("/v1/describe", endpoint("describe", describe, json_body=True), methods=["POST"]),
    ]

"""The approval workflow: `/v1/requests`.

Who sees what:
* the requesting analyst sees their own requests and is the only one who can fetch a result,
  once;
* owners of the request's dataset (and admins) list, read, mock-run, approve and deny;
* everyone else gets 404, as if the request did not exist.
"""
from __future__ import annotations

import csv
import io
import json

from starlette.responses import Response
from starlette.routing import Route

from rewriter.parse import parse_select
from server.http import approvals
from server.http.endpoint import Call, endpoint
from server.http.output import choose_format
from server.requests import KINDS, ApprovalRequest
from sqlgate.errors import InvalidParameter, NotFound, PermissionDenied


def _relation(call: Call, request: ApprovalRequest) -> str:
    """How the caller relates to `request`: admin, owner or requester; else not found."""
    user = call.user
    if user.is_admin:
        return "admin"
    if call.state.users.can(user, request.dataset, "own"):
        return "owner"
    if request.requester == user.name:
        return "requester"
    raise NotFound(f"request '{request.id}' does not exist")


def _load(call: Call) -> tuple[ApprovalRequest, str]:
    request = call.state.requests.get(call.param("request_id"))
    relation = _relation(call, request)
    call.audit.update(dataset=request.dataset, details={"request_id": request.id,
                                                        "kind": request.kind})
    return request, relation


def _reviewer(call: Call) -> ApprovalRequest:
    request, relation = _load(call)
    if relation not in ("admin", "owner"):
        raise PermissionDenied("only an owner of the dataset can review this request")
    return request


def create_request(call: Call):
    dataset = call.field("dataset")
    kind = call.field("kind")
    sql = call.field("sql")
    purpose = call.field("purpose")
    spec = call.field("spec", dict, required=False)
    call.audit.update(query=sql)
    if kind not in KINDS:
        raise InvalidParameter(f"kind must be one of {', '.join(KINDS)}")
    name = call.state.service.require(call.caller, dataset, "query")
    call.audit.update(dataset=name)
    parse_select(sql)             # refuse what could never run, before an owner reviews it
    if kind == "training":
        # A bad spec is refused now, naming the field, not when the owner approves it.
        from torch_bridge.validate import check_training_request   # torch-free
        check_training_request(call.state.gateway, name, sql, spec)
    if kind == "sample":
        approvals.sample_rows(spec, call.state.config.sample_row_limit)
    request = call.state.requests.create(
        requester=call.user.name, dataset=name, kind=kind, sql=sql, purpose=purpose, spec=spec,
        max_pending=call.state.config.max_pending_requests_per_user)
    call.audit.update(details={"request_id": request.id, "kind": kind})
    return request.to_dict()


def list_requests(call: Call):
    store, user = call.state.requests, call.user
    status, kind = call.query("status"), call.query("kind")
    limit = call.int_query("limit", 100, 1, 1000)
    dataset = call.query("dataset")
    if user.is_admin:
        found = store.list(status=status, kind=kind, limit=limit)
    else:
        owned = call.state.service.owned(call.caller)
        found = {r.id: r for r in store.list(requester=user.name, status=status, kind=kind,
                                             limit=limit)}
        if owned:
            found.update({r.id: r for r in store.list(datasets=owned, status=status, kind=kind,
                                                      limit=limit)})
        found = sorted(found.values(), key=lambda r: (r.created_at, r.id), reverse=True)[:limit]
    if dataset is not None:
        found = [r for r in found if r.dataset.lower() == dataset.lower()]
    return {"requests": [r.to_dict() for r in found]}


def get_request(call: Call):
    request, _ = _load(call)
    return request.to_dict()


def approve_request(call: Call):
    request = _reviewer(call)
    reason = call.field("reason")
    call.audit.update(query=request.sql)
    done = approvals.approve(call.state, request.id, call.user.name, reason)
    call.audit.update(decision="approved",
                      rows_out=(done.summary or {}).get("rows"),
                      details={"request_id": done.id, "kind": done.kind, "status": done.status,
                               "reason": reason})
    return done.to_dict()


def deny_request(call: Call):
    request = _reviewer(call)
    reason = call.field("reason")
    call.audit.update(query=request.sql)
    denied = call.state.requests.deny(request.id, call.user.name, reason)
    call.audit.update(decision="denied", details={"request_id": denied.id, "kind": denied.kind,
                                                  "reason": reason})
    return denied.to_dict()


def mock_run(call: Call):
    request = _reviewer(call)
    limit = call.state.config.mock_row_limit
    rows = call.field("rows", int, required=False, default=min(1000, limit))
    if not 1 <= rows <= limit:
        raise InvalidParameter(f"rows must be between 1 and {limit}")
    call.audit.update(query=request.sql)
    result = approvals.mock_run(call.state.gateway.dataset(request.dataset), request.sql,
                                rows=rows, row_limit=limit,
                                statement_timeout_s=call.state.config.statement_timeout_s)
    call.audit.update(details={"request_id": request.id, "mock_rows": rows,
                               "rows": len(result.rows)})
    body = result.to_dict()
    body.update(request_id=request.id, mock=True)
    return body


def fetch_result(call: Call):
    request, relation = _load(call)
    if request.requester != call.user.name:
        raise PermissionDenied("only the analyst who made the request can fetch its result")
    fmt = choose_format(call.request, call.query("format"))
    if fmt == "arrow":
        raise InvalidParameter("request results are available as json or csv")
    stored = call.state.requests.fetch_result(request.id)
    rows = (stored.summary or {}).get("rows")
    call.audit.update(query=request.sql, rows_out=rows,
                      details={"request_id": request.id, "kind": request.kind})
    headers = {"X-Sqlgate-Request-Id": request.id}
    if fmt == "csv" and stored.content_type == approvals.RESULT_CONTENT_TYPE:
        return Response(_csv(stored.body), media_type="text/csv; charset=utf-8", headers=headers)
    return Response(stored.body, media_type=stored.content_type, headers=headers)


def _csv(body: bytes) -> bytes:
    data = json.loads(body)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(data["columns"])
    for row in data["rows"]:
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue().encode()


def routes() -> list[Route]:
    return [
        Route("/v1/requests", endpoint("request.create", create_request, json_body=True),
              methods=["POST"]),
        Route("/v1/requests", endpoint("request.list", list_requests), methods=["GET"]),
        Route("/v1/requests/{request_id}", endpoint("request.get", get_request), methods=["GET"]),
        Route("/v1/requests/{request_id}/approve",
              endpoint("request.approve", approve_request, json_body=True), methods=["POST"]),
        Route("/v1/requests/{request_id}/deny",
              endpoint("request.deny", deny_request, json_body=True), methods=["POST"]),
        Route("/v1/requests/{request_id}/mock-run",
              endpoint("request.mock_run", mock_run, json_body=True), methods=["POST"]),
        Route("/v1/requests/{request_id}/result",
              endpoint("request.result", fetch_result), methods=["GET"]),
    ]

"""Datasets (schema, metadata, mock tables), budgets, and owners' streaming uploads.

Analysts see only datasets granted to them, and only metadata: never statistics or rows. A
mock table is generated from metadata alone. Uploads are two-step (see server/http/uploads.py)
and load all tables or nothing through `Gateway.add_dataset`.
"""
from __future__ import annotations

import math

from starlette.responses import Response
from starlette.routing import Route

from server.dataset_drop import forget_dropped_dataset
from server.http.endpoint import Call, endpoint
from server.http.output import choose_format
from server.http.uploads import format_for
from sqlgate.errors import Conflict, DataLoadError, InvalidParameter, SqlgateError
from sqlgate.metadata import Budget, DatasetMeta, dataset_to_dict, parse_dataset_text
from sqlgate.results import _jsonable

_ADMIN_OR_OWNER = ("admin", "owner")


# ---------------------------------------------------------------- views


def dataset_view(call: Call, meta: DatasetMeta) -> dict:
    """Schema and metadata; owners also see per-analyst budget overrides. Source paths are
    server-side details and never shown."""
    owner = call.state.users.can(call.user, meta.name, "own")
    body = dataset_to_dict(meta)
    for table in body["tables"].values():
        table.pop("source", None)
    if not owner:
        body.pop("analyst_budgets", None)
    body["name"] = meta.name
    body["permissions"] = ["query", "own"] if owner else ["query"]
    return body


def _summary(call: Call, meta: DatasetMeta) -> dict:
    owner = call.state.users.can(call.user, meta.name, "own")
    return {"name": meta.name, "description": meta.description, "mechanism": meta.mechanism,
            "tables": sorted(meta.tables), "permissions": ["query", "own"] if owner else ["query"]}


def _budget_view(dataset: str, analyst: str, status) -> dict:
    body = status.to_dict()
    body.update(dataset=dataset, analyst=analyst)
    return body


# ---------------------------------------------------------------- datasets


def list_datasets(call: Call):
    return {"datasets": [_summary(call, meta) for meta in call.state.service.datasets(call.caller)]}


def get_dataset(call: Call):
    name = call.state.service.require(call.caller, call.param("name"), "query")
    call.audit.update(dataset=name)
    return dataset_view(call, call.state.gateway.dataset(name))


def mock_table(call: Call):
    name = call.state.service.require(call.caller, call.param("name"), "query")
    call.audit.update(dataset=name)
    limit = call.state.config.mock_row_limit
    rows = call.int_query("rows", min(100, limit), 1, limit)
    seed = call.int_query("seed", 0, 0, 2**31 - 1)
    meta = call.state.gateway.dataset(name)
    table = meta.table(call.param("table"))
    frame = call.state.gateway.mock_table(name, call.param("table"), rows=rows, seed=seed)
    body = {"dataset": name, "table": table.name, "mock": True,
            "columns": [{"name": c.name, "type": c.type} for c in table.columns.values()],
            "rows": [[_jsonable(v) for v in row] for row in frame.itertuples(index=False)]}
    call.audit.update(details={"table": table.name, "mock_rows": rows})
    if choose_format(call.request, call.query("format")) == "csv":
        return Response(frame.to_csv(index=False).encode(), media_type="text/csv; charset=utf-8",
                        headers={"X-Sqlgate-Mock": "true"})
    return body


def drop_dataset(call: Call):
    name = call.state.service.require(call.caller, call.param("name"), "own")
    call.audit.update(dataset=name)
    call.state.gateway.drop_dataset(name)
    denied = forget_dropped_dataset(call.state.users, call.state.requests, name, call.user.name)
    call.audit.update(details={"denied_requests": denied})
    return {"dropped": name}


# ---------------------------------------------------------------- budgets


def my_budgets(call: Call):
    service = call.state.service
    return {"budgets": [_budget_view(name, call.user.name, service.gateway.budget(call.user.name, name))
                        for name in sorted(service.queryable(call.caller))]}


def dataset_budgets(call: Call):
    """Owner: the budget of every user granted this dataset."""
    name = call.state.service.require(call.caller, call.param("name"), "own")
    call.audit.update(dataset=name)
    names = sorted({g["user"] for g in call.state.users.grants(name)})
    return {"budgets": [_budget_view(name, n, call.state.gateway.budget(n, name)) for n in names]}


def get_budget(call: Call):
    analyst = call.param("analyst")
    # Analysts may read their own budget; anyone else's needs ownership.
    permission = "query" if analyst == call.user.name else "own"
    name = call.state.service.require(call.caller, call.param("name"), permission)
    call.audit.update(dataset=name, details={"analyst": analyst})
    return _budget_view(name, analyst, call.state.gateway.budget(analyst, name))


def set_budget(call: Call):
    name = call.state.service.require(call.caller, call.param("name"), "own")
    analyst = call.param("analyst")
    call.state.users.user(analyst)          # a typo must not create a budget for nobody
    epsilon = call.field("epsilon", (int, float))
    delta = call.field("delta", (int, float), required=False, default=0.0)
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise InvalidParameter("epsilon must be a positive finite number")
    if not math.isfinite(delta) or not 0 <= delta < 1:
        raise InvalidParameter("delta must be a number in [0, 1)")
    call.audit.update(dataset=name, epsilon=float(epsilon), delta=float(delta),
                      details={"analyst": analyst})
    status = call.state.gateway.set_budget(analyst, name, Budget(float(epsilon), float(delta)),
                                           set_by=call.user.name)
    return _budget_view(name, analyst, status)


# ---------------------------------------------------------------- uploads


def create_upload(call: Call):
    text = call.field("metadata")
    replace = call.field("replace", bool, required=False, default=False)
    meta = parse_dataset_text(text)
    call.audit.update(dataset=meta.name)
    _check_may_load(call, meta.name, replace)
    session = call.state.uploads.create(call.user.name, meta, replace_existing=replace)
    call.audit.update(details={"upload_id": session.id, "tables": sorted(session.files)})
    return session.to_dict()


def _check_may_load(call: Call, dataset: str, replace: bool) -> bool:
    """True when `dataset` exists (then replacing it needs `own` and replace=true)."""
    exists = any(m.name.lower() == dataset.lower() for m in call.state.gateway.datasets())
    if exists:
        call.state.service.require(call.caller, dataset, "own")
        if not replace:
            raise Conflict(f"dataset '{dataset}' already exists; send replace: true to replace "
                           f"it")
    return exists


def get_upload(call: Call):
    session = call.state.uploads.get(call.param("upload_id"), call.user.name,
                                     is_admin=call.user.is_admin)
    call.audit.update(dataset=session.meta.name)
    return session.to_dict()


async def put_upload_file(call: Call):
    state = call.state
    session = state.uploads.get(call.param("upload_id"), call.user.name,
                                is_admin=call.user.is_admin)
    table = call.param("table").lower()
    call.audit.update(dataset=session.meta.name)
    fmt = format_for(session.source_hints.get(table), call.query("format"),
                     call.request.headers.get("content-type"))
    length = call.request.headers.get("content-length")
    declared = int(length) if length and length.isdigit() else None
    upload = await state.uploads.receive(session, table, fmt, call.request.stream(), declared)
    call.audit.update(details={"upload_id": session.id, "table": upload.table,
                               "format": fmt, "bytes": upload.bytes_received})
    return session.to_dict()


def commit_upload(call: Call):
    state = call.state
    session = state.uploads.get(call.param("upload_id"), call.user.name,
                                is_admin=call.user.is_admin)
    meta = session.meta
    call.audit.update(dataset=meta.name)
    # A missing table leaves the session open (upload it, commit again); from here on the
    # session ends whatever happens, so its files never outlive a failed load.
    paths = state.uploads.begin_commit(session)
    try:
        exists = _check_may_load(call, meta.name, session.replace)
        try:
            loaded = state.gateway.add_dataset(meta, paths, replace=exists)
        except SqlgateError:
            raise
        except Exception:
            # Engine/reader texts can quote file contents: keep them out of the answer.
            raise DataLoadError("the uploaded files could not be loaded; nothing was changed "
                                "(engine details are withheld)") from None
    finally:
        state.uploads.discard(session)
    if call.user.role == "owner":
        state.users.grant(call.user.name, loaded.name, "own")
    call.audit.update(details={"upload_id": session.id, "replaced": exists,
                               "tables": sorted(loaded.tables),
                               "bytes": sum(f.bytes_received for f in session.files.values())})
    body = dataset_view(call, loaded)
    body["replaced"] = exists
    return body


def delete_upload(call: Call):
    session = call.state.uploads.get(call.param("upload_id"), call.user.name,
                                     is_admin=call.user.is_admin)
    call.audit.update(dataset=session.meta.name)
    if session.status != "open":
        raise Conflict(f"upload '{session.id}' is {session.status}")
    call.state.uploads.discard(session)
    return {"deleted": session.id}


def routes() -> list[Route]:
    return [
        Route("/v1/datasets", endpoint("datasets.list", list_datasets), methods=["GET"]),
        Route("/v1/datasets/{name}", endpoint("datasets.get", get_dataset), methods=["GET"]),
        Route("/v1/datasets/{name}", endpoint("datasets.drop", drop_dataset,
                                              roles=_ADMIN_OR_OWNER), methods=["DELETE"]),
        Route("/v1/datasets/{name}/tables/{table}/mock",
              endpoint("datasets.mock", mock_table), methods=["GET"]),
        Route("/v1/budgets", endpoint("budgets.mine", my_budgets), methods=["GET"]),
        Route("/v1/datasets/{name}/budgets", endpoint("budgets.list", dataset_budgets,
                                                      roles=_ADMIN_OR_OWNER), methods=["GET"]),
        Route("/v1/datasets/{name}/budgets/{analyst}",
              endpoint("budgets.get", get_budget), methods=["GET"]),
        Route("/v1/datasets/{name}/budgets/{analyst}",
              endpoint("budgets.set", set_budget, json_body=True, roles=_ADMIN_OR_OWNER),
              methods=["PUT"]),
        Route("/v1/uploads", endpoint("upload.create", create_upload, json_body=True,
                                      roles=_ADMIN_OR_OWNER), methods=["POST"]),
        Route("/v1/uploads/{upload_id}", endpoint("upload.get", get_upload,
                                                  roles=_ADMIN_OR_OWNER), methods=["GET"]),
        Route("/v1/uploads/{upload_id}", endpoint("upload.delete", delete_upload,
                                                  roles=_ADMIN_OR_OWNER), methods=["DELETE"]),
        Route("/v1/uploads/{upload_id}/tables/{table}",
              endpoint("upload.file", put_upload_file, roles=_ADMIN_OR_OWNER), methods=["PUT"]),
        Route("/v1/uploads/{upload_id}/commit",
              endpoint("upload.commit", commit_upload, roles=_ADMIN_OR_OWNER), methods=["POST"]),
    ]

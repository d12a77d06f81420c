"""The OpenAPI 3.1 document of `/v1` (hand-written; a test checks it covers every route)."""
from __future__ import annotations

from typing import Any

_REF = "#/components/schemas/"


def _ref(name: str) -> dict:
    return {"$ref": _REF + name}


def _obj(properties: dict, required: tuple = (), extra: bool = True) -> dict:
    body: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        body["required"] = list(required)
    if not extra:
        body["additionalProperties"] = False
    return body


_NUM = {"type": "number"}
_INT = {"type": "integer"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_NULLNUM = {"type": ["number", "null"]}
_NULLSTR = {"type": ["string", "null"]}
_ANYOBJ = {"type": "object", "additionalProperties": True}

SCHEMAS: dict[str, dict] = {
    "Error": _obj({"error": _obj({
        "code": _STR, "message": _STR, "sqlstate": _STR, "hint": _STR, "details": _ANYOBJ},
        ("code", "message", "sqlstate"))}, ("error",)),
    "Cost": _obj({"measure": {"enum": ["pure", "zcdp"]}, "epsilon": _NUM, "delta": _NUM,
                  "rho": _NUM}, ("measure", "epsilon", "delta")),
    "Column": _obj({"name": _STR, "type": {"enum": ["int", "float", "string", "bool", "date"]},
                    "noisy": _BOOL, "ci95": _NULLNUM}, ("name", "type", "noisy")),
    "QueryRequest": _obj({"sql": _STR, "epsilon": {"type": "number", "exclusiveMinimum": 0},
                          "format": {"enum": ["json", "csv", "arrow"]}}, ("sql",)),
    "SqlRequest": _obj({"sql": _STR, "epsilon": {"type": "number", "exclusiveMinimum": 0}},
                       ("sql",)),
    "QueryResult": _obj({"query_id": _STR, "dataset": _STR,
                         "columns": {"type": "array", "items": _ref("Column")},
                         "rows": {"type": "array", "items": {"type": "array"}},
                         "cost": _ref("Cost"), "cached": _BOOL, "mechanism": _STR,
                         "key_release": _STR},
                        ("query_id", "dataset", "columns", "rows", "cost", "cached")),
    "Budget": _obj({"dataset": _STR, "analyst": _STR, "measure": _STR,
                    "total": _obj({"epsilon": _NUM, "delta": _NUM}),
                    "spent_epsilon": _NULLNUM, "spent_delta": _NUM, "remaining_epsilon": _NUM,
                    "remaining_delta": _NUM, "queries": _INT}),
    "BudgetList": _obj({"budgets": {"type": "array", "items": _ref("Budget")}}, ("budgets",)),
    "BudgetSet": _obj({"epsilon": {"type": "number", "exclusiveMinimum": 0},
                       "delta": {"type": "number", "minimum": 0, "exclusiveMaximum": 1}},
                      ("epsilon",)),
    "Explanation": _obj({"dataset": _STR, "cost": _ref("Cost"),
                         "columns": {"type": "array", "items": _ref("Column")},
                         "rewritten_sql": _STR, "mechanism": _STR, "key_release": _STR,
                         "threshold": {"type": ["integer", "null"]}, "budget": _ANYOBJ,
                         "notes": {"type": "array", "items": _STR}}),
    "Describe": _obj({"columns": {"type": "array", "items": _ref("Column")}}, ("columns",)),
    "DatasetSummary": _obj({"name": _STR, "description": _STR, "mechanism": _STR,
                            "tables": {"type": "array", "items": _STR},
                            "permissions": {"type": "array", "items": _STR}}),
    "DatasetList": _obj({"datasets": {"type": "array", "items": _ref("DatasetSummary")}},
                        ("datasets",)),
    "Dataset": _obj({"name": _STR, "dataset": _STR, "description": _STR, "budget": _ANYOBJ,
                     "query": _ANYOBJ, "max_public_cells": _INT, "stored_sums": _BOOL,
                     "tables": _ANYOBJ,
                     "analyst_budgets": _ANYOBJ,
                     "permissions": {"type": "array", "items": _STR}}),
    "MockTable": _obj({"dataset": _STR, "table": _STR, "mock": _BOOL,
                       "columns": {"type": "array", "items": _obj({"name": _STR, "type": _STR})},
                       "rows": {"type": "array", "items": {"type": "array"}}}),
    "UploadCreate": _obj({"metadata": {"type": "string", "description": "dataset YAML"},
                          "replace": _BOOL}, ("metadata",)),
    "UploadSession": _obj({"upload_id": _STR, "dataset": _STR, "owner": _STR, "replace": _BOOL,
                           "status": _STR, "bytes_received": _INT, "ready": _BOOL,
                           "tables": {"type": "array", "items": _obj({
                               "table": _STR, "format": _NULLSTR, "bytes_received": _INT,
                               "complete": _BOOL, "receiving": _BOOL})}}),
    "RequestCreate": _obj({"dataset": _STR, "kind": {"enum": ["exact", "sample", "training"]},
                           "sql": _STR, "purpose": _STR, "spec": _ANYOBJ},
                          ("dataset", "kind", "sql", "purpose")),
    "Request": _obj({"id": _STR, "kind": _STR, "dataset": _STR, "requester": _STR, "sql": _STR,
                     "purpose": _STR, "spec": {"type": ["object", "null"]},
                     "status": {"enum": ["pending", "approved", "running", "done", "failed",
                                         "denied", "fetched"]},
                     "created_at": _STR, "updated_at": _STR, "reviewer": _NULLSTR,
                     "reason": _NULLSTR, "decided_at": _NULLSTR,
                     "progress": {"type": ["object", "null"]}, "content_type": _NULLSTR,
                     "summary": {"type": ["object", "null"]}, "error_code": _NULLSTR,
                     "error_message": _NULLSTR, "fetched_at": _NULLSTR,
                     "result_available": _BOOL}),
    "RequestList": _obj({"requests": {"type": "array", "items": _ref("Request")}}),
    "Reason": _obj({"reason": {"type": "string", "minLength": 1}}, ("reason",)),
    "MockRunRequest": _obj({"rows": {"type": "integer", "minimum": 1}}),
    "ExactResult": _obj({"columns": {"type": "array", "items": _STR},
                         "types": {"type": "array", "items": _STR},
                         "rows": {"type": "array", "items": {"type": "array"}},
                         "truncated": _BOOL, "mock": _BOOL, "request_id": _STR}),
    "User": _obj({"name": _STR, "role": {"enum": ["admin", "owner", "analyst"]},
                  "grants": {"type": "array", "items": _ANYOBJ},
                  "tokens": {"type": "array", "items": _ANYOBJ}, "datasets": _ANYOBJ}),
    "UserList": _obj({"users": {"type": "array", "items": _ref("User")}}),
    "UserCreate": _obj({"name": _STR, "role": {"enum": ["admin", "owner", "analyst"]},
                        "password": {"type": "string", "minLength": 8}, "label": _STR},
                       ("name", "role")),
    "NewToken": _obj({"user": _STR, "name": _STR, "role": _STR, "token": _STR, "token_id": _STR}),
    "TokenCreate": _obj({"label": _STR}),
    "TokenList": _obj({"tokens": {"type": "array", "items": _obj({
        "token_id": _STR, "name": _STR, "label": _NULLSTR, "created_at": _STR,
        "revoked": _BOOL})}}),
    "Password": _obj({"password": {"type": "string", "minLength": 8}}, ("password",)),
    "Grant": _obj({"user": _STR, "dataset": _STR, "permission": {"enum": ["query", "own"]},
                   "granted": _BOOL, "granted_at": _STR}),
    "GrantList": _obj({"grants": {"type": "array", "items": _ref("Grant")}}),
    "AuditRecord": _obj({"seq": _INT, "ts": _STR, "actor": _NULLSTR, "role": _NULLSTR,
                         "source": _NULLSTR, "channel": _STR, "action": _STR,
                         "dataset": _NULLSTR, "query": _NULLSTR, "rewritten": _NULLSTR,
                         "epsilon": _NULLNUM, "delta": _NULLNUM, "decision": _STR,
                         "code": _NULLSTR, "rows_out": {"type": ["integer", "null"]},
                         "details": {"type": ["object", "null"]}, "prev_hash": _STR,
                         "hash": _STR}),
    "AuditPage": _obj({"records": {"type": "array", "items": _ref("AuditRecord")},
                       "head": _obj({"seq": _INT, "hash": _STR})}),
    "ChainReport": _obj({"ok": _BOOL, "records": _INT, "first_bad_seq": {"type": ["integer", "null"]},
                         "reason": _NULLSTR, "head": _ANYOBJ}, ("ok", "records")),
    "Health": _obj({"status": _STR, "version": _STR}),
    "Done": _ANYOBJ,
}


def _json(schema: str) -> dict:
    return {"application/json": {"schema": _ref(schema)}}


def _op(summary: str, response: str, *, body: str | None = None, params: tuple = (),
        auth: bool = True, extra_content: dict | None = None, status: str = "200",
        query: tuple = ()) -> dict:
    op: dict[str, Any] = {"summary": summary, "responses": {}}
    content = _json(response)
    if extra_content:
        content.update(extra_content)
    op["responses"][status] = {"description": "success", "content": content}
    for code in ("400", "401", "403", "404", "409", "413", "429", "500"):
        op["responses"][code] = {"description": "error", "content": _json("Error")}
    if body:
        op["requestBody"] = {"required": True, "content": _json(body)}
    parameters = [{"name": p, "in": "path", "required": True, "schema": _STR} for p in params]
    parameters += [{"name": q, "in": "query", "required": False,
                    "schema": _INT if q in ("rows", "seed", "limit", "after_seq") else _STR}
                   for q in query]
    if parameters:
        op["parameters"] = parameters
    if not auth:
        op["security"] = []
    return op


_CSV = {"text/csv": {"schema": {"type": "string"}}}
_ARROW = {"application/vnd.apache.arrow.stream": {"schema": {"type": "string",
                                                             "format": "binary"}}}
_AUDIT_FILTERS = ("actor", "dataset", "action", "decision", "channel", "since", "until",
                  "after_seq", "limit")

PATHS: dict[str, dict] = {
    "/v1/health": {"get": _op("liveness", "Health", auth=False)},
    "/v1/openapi.json": {"get": _op("this document", "Done", auth=False)},
    "/v1/query": {"post": _op("run one DP query (JSON, CSV or Arrow IPC stream)", "QueryResult",
                              body="QueryRequest", extra_content={**_CSV, **_ARROW},
                              query=("format",))},
    "/v1/explain": {"post": _op("cost, accuracy and rewritten SQL; spends nothing",
                                "Explanation", body="SqlRequest")},
    "/v1/describe": {"post": _op("output columns; no data, no budget", "Describe",
                                 body="SqlRequest")},
    "/v1/datasets": {"get": _op("datasets the caller may query", "DatasetList")},
    "/v1/datasets/{name}": {
        "get": _op("schema and metadata (no statistics)", "Dataset", params=("name",)),
        "delete": _op("drop a dataset (owner)", "Done", params=("name",))},
    "/v1/datasets/{name}/tables/{table}/mock": {
        "get": _op("mock rows generated from metadata only", "MockTable",
                   params=("name", "table"), query=("rows", "seed", "format"),
                   extra_content=_CSV)},
    "/v1/budgets": {"get": _op("the caller's budgets", "BudgetList")},
    "/v1/datasets/{name}/budgets": {
        "get": _op("budgets of every user granted the dataset (owner)", "BudgetList",
                   params=("name",))},
    "/v1/datasets/{name}/budgets/{analyst}": {
        "get": _op("one analyst's budget (owner, or the analyst)", "Budget",
                   params=("name", "analyst")),
        "put": _op("set an analyst's budget (owner)", "Budget", body="BudgetSet",
                   params=("name", "analyst"))},
    "/v1/uploads": {"post": _op("start an upload with the metadata YAML (owner)",
                                "UploadSession", body="UploadCreate")},
    "/v1/uploads/{upload_id}": {
        "get": _op("upload progress", "UploadSession", params=("upload_id",)),
        "delete": _op("abort an upload", "Done", params=("upload_id",))},
    "/v1/uploads/{upload_id}/tables/{table}": {
        "put": {**_op("stream one table's CSV or Parquet file", "UploadSession",
                      params=("upload_id", "table"), query=("format",)),
                "requestBody": {"required": True, "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "application/vnd.apache.parquet": {"schema": {"type": "string",
                                                                  "format": "binary"}},
                    "application/octet-stream": {"schema": {"type": "string",
                                                            "format": "binary"}}}}}},
    "/v1/uploads/{upload_id}/commit": {
        "post": _op("load every table or none", "Dataset", params=("upload_id",))},
    "/v1/requests": {
        "post": _op("ask for what DP cannot give (exact, sample, training)", "Request",
                    body="RequestCreate"),
        "get": _op("requests the caller made or may review", "RequestList",
                   query=("status", "kind", "dataset", "limit"))},
    "/v1/requests/{request_id}": {"get": _op("one request", "Request", params=("request_id",))},
    "/v1/requests/{request_id}/approve": {
        "post": _op("approve and run (owner)", "Request", body="Reason", params=("request_id",))},
    "/v1/requests/{request_id}/deny": {
        "post": _op("deny (owner)", "Request", body="Reason", params=("request_id",))},
    "/v1/requests/{request_id}/mock-run": {
        "post": _op("run the request's SQL on mock data (owner)", "ExactResult",
                    body="MockRunRequest", params=("request_id",))},
    "/v1/requests/{request_id}/result": {
        "get": _op("the result, once, for the requesting analyst (second fetch: 410)",
                   "ExactResult", params=("request_id",), query=("format",),
                   extra_content=_CSV)},
    "/v1/me": {"get": _op("the caller, its grants and tokens", "User")},
    "/v1/users": {"get": _op("users (admin)", "UserList"),
                  "post": _op("create a user; returns its first token once (admin)", "NewToken",
                              body="UserCreate")},
    "/v1/users/{user}": {"get": _op("one user (admin)", "User", params=("user",)),
                         "delete": _op("disable a user and revoke its tokens (admin)", "Done",
                                       params=("user",))},
    "/v1/users/{user}/password": {"put": _op("set a password (admin)", "Done", body="Password",
                                             params=("user",))},
    "/v1/users/{user}/tokens": {
        "get": _op("a user's tokens, without secrets (admin)", "TokenList", params=("user",)),
        "post": _op("issue a token, shown once (admin)", "NewToken", body="TokenCreate",
                    params=("user",))},
    "/v1/users/{user}/tokens/{token_id}": {
        "delete": _op("revoke a token (admin)", "Done", params=("user", "token_id"))},
    "/v1/grants": {"get": _op("grants (admin: all, owner: on owned datasets)", "GrantList",
                              query=("dataset",))},
    "/v1/users/{user}/grants/{dataset}/{permission}": {
        "put": _op("grant (admin; owners grant query on datasets they own)", "Grant",
                   params=("user", "dataset", "permission")),
        "delete": _op("revoke (admin; owners revoke query on datasets they own)", "Grant",
                      params=("user", "dataset", "permission"))},
    "/v1/audit": {"get": _op("audit records (owner: their datasets; admin: all)", "AuditPage",
                             query=_AUDIT_FILTERS)},
    "/v1/audit/verify": {"get": _op("verify the hash chain", "ChainReport")},
}


def openapi_document(version: str) -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "sqlgate", "version": version,
                 "description": "Differentially private SQL over private data. Every error is "
                                "{\"error\": {code, message, sqlstate, hint?, details?}}."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"basic": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "basic": {"type": "http", "scheme": "basic"}},
            "schemas": SCHEMAS},
        "paths": PATHS,
    }

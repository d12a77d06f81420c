"""The OpenAPI document is valid and covers every /v1 route and method."""
from __future__ import annotations

import re

from starlette.routing import Route

from server.http.app import v1_routes
from tests._require import require_module


def _document(domain):
    response = domain.client().get("/v1/openapi.json")
    assert response.status_code == 200
    return response.json()


def test_document_is_valid_openapi(domain):
    validator = require_module("openapi_spec_validator")
    validator.validate(_document(domain))


def test_every_route_and_method_is_documented(domain):
    paths = _document(domain)["paths"]
    served = set()
    for route in v1_routes():
        assert isinstance(route, Route)
        for method in route.methods - {"HEAD"}:
            served.add((route.path, method.lower()))
    documented = {(path, method) for path, ops in paths.items() for method in ops}
    assert served == documented
    for path, ops in paths.items():
        names = set(re.findall(r"{(\w+)}", path))
        for method, op in ops.items():
            params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert params == names, (path, method)
            assert "200" in op["responses"]


def _validator(document, schema):
    jsonschema = require_module("jsonschema")
    root = {**schema, "components": document["components"]}
    return jsonschema.Draft202012Validator(root)


def test_responses_match_their_documented_schemas(domain, clients):
    document = _document(domain)
    ann, olga, root = clients["ann"], clients["olga"], clients["root"]
    sql = "SELECT region, COUNT(*) AS n FROM patients GROUP BY region"
    rid = ann.post("/v1/requests", json={"dataset": "hospital", "kind": "exact", "sql": sql,
                                         "purpose": "p"}).json()["id"]
    calls = [
        (ann, "post", "/v1/query", "/v1/query", {"sql": sql}),
        (ann, "post", "/v1/explain", "/v1/explain", {"sql": sql}),
        (ann, "post", "/v1/describe", "/v1/describe", {"sql": sql}),
        (ann, "get", "/v1/datasets", "/v1/datasets", None),
        (ann, "get", "/v1/datasets/hospital", "/v1/datasets/{name}", None),
        (ann, "get", "/v1/datasets/hospital/tables/patients/mock",
         "/v1/datasets/{name}/tables/{table}/mock", None),
        (ann, "get", "/v1/budgets", "/v1/budgets", None),
        (olga, "get", "/v1/datasets/hospital/budgets", "/v1/datasets/{name}/budgets", None),
        (olga, "put", "/v1/datasets/hospital/budgets/ann",
         "/v1/datasets/{name}/budgets/{analyst}", {"epsilon": 4}),
        (olga, "post", "/v1/uploads", "/v1/uploads", {"metadata": "dataset: up\ntables:\n"
                                                      "  t:\n    public: true\n"
                                                      "    columns: {a: int}\n"}),
        (ann, "get", "/v1/requests", "/v1/requests", None),
        (olga, "post", f"/v1/requests/{rid}/mock-run", "/v1/requests/{request_id}/mock-run", {}),
        (olga, "post", f"/v1/requests/{rid}/approve", "/v1/requests/{request_id}/approve",
         {"reason": "ok"}),
        (ann, "get", f"/v1/requests/{rid}/result", "/v1/requests/{request_id}/result", None),
        (ann, "get", "/v1/me", "/v1/me", None),
        (root, "get", "/v1/users", "/v1/users", None),
        (root, "post", "/v1/users", "/v1/users", {"name": "zed", "role": "analyst"}),
        (root, "get", "/v1/users/zed/tokens", "/v1/users/{user}/tokens", None),
        (root, "put", "/v1/users/zed/grants/hospital/query",
         "/v1/users/{user}/grants/{dataset}/{permission}", None),
        (root, "get", "/v1/grants", "/v1/grants", None),
        (olga, "get", "/v1/audit", "/v1/audit", None),
        (olga, "get", "/v1/audit/verify", "/v1/audit/verify", None),
        (ann, "get", "/v1/requests/nope", "/v1/requests/{request_id}", None),
    ]
    for client, method, url, template, body in calls:
        response = client.request(method.upper(), url, json=body)
        status = str(response.status_code)
        documented = document["paths"][template][method]["responses"]
        assert status in documented, (url, status, response.text)
        schema = documented[status]["content"]["application/json"]["schema"]
        errors = sorted(_validator(document, schema).iter_errors(response.json()),
                        key=lambda e: list(e.path))
        assert not errors, (url, [e.message for e in errors[:3]])

"""DP queries over HTTP: formats, auth schemes, limits and JSON errors."""
from __future__ import annotations

import base64
import csv
import io
import json

import pyarrow as pa
import pytest

from tests.server.conftest import SECRET_NOTE, assert_error, make_domain

SQL = "SELECT region, COUNT(*) AS n, AVG(age) AS mean_age FROM patients GROUP BY region " \
      "ORDER BY region"


def test_query_json_charges_budget_and_is_audited(domain, clients):
    ann = clients["ann"]
    before = ann.get("/v1/budgets").json()["budgets"]
    assert [b["dataset"] for b in before] == ["hospital"]
    response = ann.post("/v1/query", json={"sql": SQL, "epsilon": 1.0})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dataset"] == "hospital"
    assert [c["name"] for c in body["columns"]] == ["region", "n", "mean_age"]
    assert [row[0] for row in body["rows"]] == sorted(["north", "south", "east", "west"])
    assert body["cost"]["epsilon"] == pytest.approx(1.0) and body["cached"] is False
    assert all(c["ci95"] > 0 for c in body["columns"][1:])
    after = ann.get("/v1/datasets/hospital/budgets/ann").json()
    assert after["spent_epsilon"] == pytest.approx(1.0)
    assert after["queries"] == 1
    [record] = domain.state.audit.records(actor="ann", action="query")
    assert record["channel"] == "http" and record["decision"] == "ok"
    assert record["query"] == SQL and record["rewritten"] and record["rows_out"] == 4
    assert record["source"].startswith("127.0.0.1:")


def test_csv_and_arrow_come_from_the_same_noisy_answer(clients):
    ann = clients["ann"]
    as_json = ann.post("/v1/query", json={"sql": SQL}).json()
    as_csv = ann.post("/v1/query", json={"sql": SQL, "format": "csv"})
    assert as_csv.status_code == 200
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.headers["x-sqlgate-cached"] == "true"     # the repeat is the cached answer
    assert json.loads(as_csv.headers["x-sqlgate-ci95"]).keys() == {"n", "mean_age"}
    rows = list(csv.reader(io.StringIO(as_csv.text)))
    assert rows[0] == ["region", "n", "mean_age"]
    assert [[r[0], int(r[1])] for r in rows[1:]] == [[r[0], r[1]] for r in as_json["rows"]]

    as_arrow = ann.post("/v1/query", json={"sql": SQL},
                        headers={"Accept": "application/vnd.apache.arrow.stream"})
    assert as_arrow.status_code == 200
    assert as_arrow.headers["content-type"] == "application/vnd.apache.arrow.stream"
    table = pa.ipc.open_stream(as_arrow.content).read_all()
    assert table.column_names == ["region", "n", "mean_age"]
    assert table.column("n").to_pylist() == [r[1] for r in as_json["rows"]]
    assert table.schema.field("n").metadata[b"noisy"] == b"true"
    meta = json.loads(table.schema.metadata[b"sqlgate"])
    assert meta["query_id"] == as_json["query_id"]
    via_query_param = ann.post("/v1/query?format=csv", json={"sql": SQL})
    assert via_query_param.text == as_csv.text


def test_explain_and_describe_spend_nothing(domain, clients):
    ann = clients["ann"]
    explained = ann.post("/v1/explain", json={"sql": SQL, "epsilon": 2.0})
    assert explained.status_code == 200
    body = explained.json()
    assert body["cost"]["epsilon"] == pytest.approx(2.0) and body["key_release"] == "public"
    assert "patients" in body["rewritten_sql"]
    described = ann.post("/v1/describe", json={"sql": SQL}).json()
    assert [c["name"] for c in described["columns"]] == ["region", "n", "mean_age"]
    assert ann.get("/v1/datasets/hospital/budgets/ann").json()["queries"] == 0
    assert domain.state.audit.records(actor="ann", action="explain")[0]["rewritten"]


def test_basic_auth_uses_the_password(clients, domain):
    client = domain.client()
    good = base64.b64encode(b"ann:ann-password").decode()
    response = client.post("/v1/query", json={"sql": SQL}, headers={"Authorization": f"Basic {good}"})
    assert response.status_code == 200
    bad = base64.b64encode(b"ann:wrong-password").decode()
    assert_error(client.get("/v1/budgets", headers={"Authorization": f"Basic {bad}"}), 401,
                 "authentication_failed")
    assert_error(client.get("/v1/budgets", headers={"Authorization": "Basic !!!"}), 401,
                 "authentication_failed")
    missing = client.get("/v1/budgets")
    assert_error(missing, 401, "authentication_failed")
    assert "Bearer" in missing.headers["www-authenticate"]
    assert_error(client.get("/v1/budgets", headers={"Authorization": "Bearer sqg_nope"}), 401,
                 "authentication_failed")
    failures = domain.state.audit.records(action="auth")
    assert len(failures) == 4 and {r["decision"] for r in failures} == {"refused"}


def test_revoked_token_and_disabled_user_lose_access(domain, clients):
    root = clients["root"]
    [info] = root.get("/v1/users/bob/tokens").json()["tokens"]
    assert root.delete(f"/v1/users/bob/tokens/{info['token_id']}").status_code == 200
    assert_error(clients["bob"].get("/v1/budgets"), 401, "authentication_failed")
    assert root.delete("/v1/users/ann").status_code == 200
    assert_error(clients["ann"].get("/v1/budgets"), 401, "authentication_failed")


def test_refusals_are_json_with_stable_codes_and_no_data(clients):
    ann = clients["ann"]
    assert_error(ann.post("/v1/query", json={"sql": "SELECT * FROM patients"}), 403,
                 "refused_by_policy")
    assert_error(ann.post("/v1/query", json={"sql": "SELEC 1"}), 400, "syntax_error")
    assert_error(ann.post("/v1/query", json={"sql": "DROP TABLE patients"}), 403, "read_only")
    assert_error(ann.post("/v1/query", json={
        "sql": f"SELECT COUNT(*) FROM patients WHERE note = '{SECRET_NOTE}x'", "epsilon": -1}),
        400, "invalid_parameter")
    # A dataset the analyst may not query looks exactly like a missing one.
    forbidden = assert_error(ann.post("/v1/query", json={"sql": "SELECT COUNT(*) FROM orders"}),
                             404, "undefined_table")
    missing = assert_error(ann.post("/v1/query", json={"sql": "SELECT COUNT(*) FROM nothing"}),
                           404, "undefined_table")
    assert forbidden["sqlstate"] == missing["sqlstate"]
    assert_error(ann.post("/v1/query", json={"sql": 42}), 400, "invalid_parameter")
    assert_error(ann.post("/v1/query", json={}), 400, "invalid_parameter")
    assert_error(ann.post("/v1/query", content=b"{not json", headers={"Content-Type":
                                                                       "application/json"}),
                 400, "invalid_parameter")
    assert_error(ann.post("/v1/query", json=[1, 2]), 400, "invalid_parameter")
    assert_error(ann.post("/v1/query", json={"sql": SQL, "format": "xml"}), 400,
                 "invalid_parameter")
    assert_error(ann.get("/v1/no/such/route"), 404, "not_found")
    assert_error(ann.get("/v1/query"), 405, "method_not_allowed")


def test_budget_exhaustion_is_402_with_remaining(clients):
    ann = clients["ann"]
    response = ann.post("/v1/query", json={"sql": "SELECT COUNT(*) FROM patients",
                                           "epsilon": 60.0})
    error = assert_error(response, 402, "budget_exhausted")
    assert "remaining_epsilon" in json.dumps(error.get("details", {}))


def test_body_limit_is_enforced_while_streaming(tmp_path):
    domain = make_domain(tmp_path / "small", max_body_bytes=2048)
    try:
        ann = domain.client("ann")
        big = {"sql": "SELECT COUNT(*) FROM patients -- " + "x" * 4096}
        error = assert_error(ann.post("/v1/query", json=big), 413, "limit_exceeded")
        assert error["details"]["limit_bytes"] == 2048

        def chunks():          # no Content-Length: the cap applies while reading
            for _ in range(10):
                yield b" " * 512

        assert_error(ann.post("/v1/query", content=chunks(),
                              headers={"Content-Type": "application/json"}), 413,
                     "limit_exceeded")
        assert ann.post("/v1/query", json={"sql": "SELECT COUNT(*) FROM patients"}).status_code \
            == 200
    finally:
        domain.state.close()


def test_per_user_concurrency_limit_is_429(domain, clients):
    limiter = domain.state.service.limiter
    with limiter.slot("ann"), limiter.slot("ann"), limiter.slot("ann"), limiter.slot("ann"):
        assert_error(clients["ann"].post("/v1/query", json={"sql": SQL}), 429,
                     "too_many_requests")
        # Another user is not affected.
        assert clients["bob"].post("/v1/query", json={"sql": SQL}).status_code == 200


def test_statement_timeout_is_passed_to_the_gateway(tmp_path):
    domain = make_domain(tmp_path / "t", statement_timeout_s=7.5)
    try:
        assert domain.state.gateway.statement_timeout_s == 7.5
    finally:
        domain.state.close()


def test_unknown_server_option_is_refused(tmp_path):
    from server.state import ServerState
    from sqlgate.errors import InvalidParameter
    with pytest.raises(InvalidParameter):
        ServerState.open(tmp_path / "x", max_body_byte=1)
    with pytest.raises(InvalidParameter):
        ServerState.open(tmp_path / "y", max_body_bytes=0)


def test_unexpected_failures_are_generic_500(domain, clients, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError(f"engine said: value {SECRET_NOTE}")

    monkeypatch.setattr(domain.state.gateway, "describe", boom)
    error = assert_error(clients["ann"].post("/v1/describe", json={"sql": SQL}), 500,
                         "internal_error")
    assert "withheld" in error["message"]

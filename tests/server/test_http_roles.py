"""Every role boundary: analysts, owners of one dataset, admins."""
from __future__ import annotations

import pytest

from tests.server.conftest import SECRET_NOTE, assert_error


def test_analysts_see_only_granted_datasets_and_metadata(clients):
    ann, eve = clients["ann"], clients["eve"]
    assert [d["name"] for d in ann.get("/v1/datasets").json()["datasets"]] == ["hospital"]
    assert eve.get("/v1/datasets").json()["datasets"] == []
    meta = ann.get("/v1/datasets/hospital").json()
    assert meta["permissions"] == ["query"]
    assert meta["tables"]["patients"]["columns"]["age"] == {"type": "int", "lower": 0,
                                                             "upper": 100, "nullable": False}
    assert "source" not in meta["tables"]["patients"] and "analyst_budgets" not in meta
    # Ungranted and missing datasets answer alike.
    assert_error(ann.get("/v1/datasets/shop"), 404, "not_found")
    assert_error(ann.get("/v1/datasets/nothing"), 404, "not_found")
    assert_error(eve.get("/v1/datasets/hospital"), 404, "not_found")
    owner_view = clients["olga"].get("/v1/datasets/hospital").json()
    assert owner_view["permissions"] == ["query", "own"] and "analyst_budgets" in owner_view


def test_mock_tables_come_from_metadata_not_rows(clients, domain):
    ann = clients["ann"]
    response = ann.get("/v1/datasets/hospital/tables/patients/mock?rows=50&seed=2")
    assert response.status_code == 200
    body = response.json()
    assert body["mock"] is True and len(body["rows"]) == 50
    names = [c["name"] for c in body["columns"]]
    real_notes = set(domain.state.gateway.executor.connection.execute(
        'SELECT DISTINCT note FROM "hospital"."patients"').fetchall())
    notes = {(row[names.index("note")],) for row in body["rows"]}
    assert not notes & real_notes
    regions = {row[names.index("region")] for row in body["rows"]}
    assert regions <= {"north", "south", "east", "west"}
    assert all(0 <= row[names.index("age")] <= 100 for row in body["rows"])
    as_csv = ann.get("/v1/datasets/hospital/tables/patients/mock?rows=5&format=csv")
    assert as_csv.text.splitlines()[0] == "pid,age,region,note"
    assert_error(ann.get("/v1/datasets/hospital/tables/patients/mock?rows=0"), 400,
                 "invalid_parameter")
    assert_error(ann.get("/v1/datasets/hospital/tables/nope/mock"), 404, "undefined_table")
    assert_error(clients["eve"].get("/v1/datasets/hospital/tables/patients/mock"), 404,
                 "not_found")


def test_analyst_cannot_manage_anything(clients):
    ann = clients["ann"]
    assert_error(ann.get("/v1/users"), 403, "permission_denied")
    assert_error(ann.post("/v1/users", json={"name": "mallory", "role": "admin"}), 403,
                 "permission_denied")
    assert_error(ann.post("/v1/users/ann/tokens", json={}), 403, "permission_denied")
    assert_error(ann.put("/v1/users/ann/grants/shop/query"), 403, "permission_denied")
    assert_error(ann.put("/v1/datasets/hospital/budgets/ann", json={"epsilon": 1000}), 403,
                 "permission_denied")
    assert_error(ann.get("/v1/datasets/hospital/budgets/bob"), 403, "permission_denied")
    assert_error(ann.delete("/v1/datasets/hospital"), 403, "permission_denied")
    assert_error(ann.post("/v1/uploads", json={"metadata": "dataset: x"}), 403,
                 "permission_denied")
    assert_error(ann.get("/v1/audit"), 403, "permission_denied")
    assert_error(ann.get("/v1/audit/verify"), 403, "permission_denied")
    assert_error(ann.get("/v1/grants"), 403, "permission_denied")
    assert ann.get("/v1/datasets/hospital/budgets/ann").status_code == 200
    me = ann.get("/v1/me").json()
    assert me["name"] == "ann" and me["datasets"] == {"query": ["hospital"], "own": []}


def test_owner_of_one_dataset_cannot_touch_another(clients):
    oscar = clients["oscar"]
    assert [d["name"] for d in oscar.get("/v1/datasets").json()["datasets"]] == ["shop"]
    assert_error(oscar.get("/v1/datasets/hospital"), 404, "not_found")
    assert_error(oscar.put("/v1/datasets/hospital/budgets/ann", json={"epsilon": 1}), 404,
                 "not_found")
    assert_error(oscar.get("/v1/datasets/hospital/budgets"), 404, "not_found")
    assert_error(oscar.delete("/v1/datasets/hospital"), 404, "not_found")
    assert_error(oscar.put("/v1/users/oscar/grants/hospital/query"), 404, "not_found")
    assert_error(oscar.post("/v1/query", json={"sql": "SELECT COUNT(*) FROM patients"}), 404,
                 "undefined_table")
    assert_error(oscar.get("/v1/users"), 403, "permission_denied")
    # Owners may give analysts query access to their own dataset, but never ownership.
    assert oscar.put("/v1/users/eve/grants/shop/query").status_code == 200
    assert_error(oscar.put("/v1/users/eve/grants/shop/own"), 403, "permission_denied")
    assert [d["name"] for d in clients["eve"].get("/v1/datasets").json()["datasets"]] == ["shop"]
    assert [g["dataset"] for g in oscar.get("/v1/grants").json()["grants"]] == ["shop", "shop"]
    assert oscar.delete("/v1/users/eve/grants/shop/query").json()["granted"] is False
    assert clients["eve"].get("/v1/datasets").json()["datasets"] == []


def test_owner_sets_budgets_of_their_analysts(clients):
    olga = clients["olga"]
    response = olga.put("/v1/datasets/hospital/budgets/ann", json={"epsilon": 3, "delta": 1e-6})
    assert response.status_code == 200 and response.json()["total"]["epsilon"] == 3
    assert clients["ann"].get("/v1/budgets").json()["budgets"][0]["total"]["epsilon"] == 3
    listed = olga.get("/v1/datasets/hospital/budgets").json()["budgets"]
    assert {b["analyst"] for b in listed} == {"olga", "ann", "bob"}
    assert_error(olga.put("/v1/datasets/hospital/budgets/ann", json={"epsilon": -1}), 400,
                 "invalid_parameter")
    assert_error(olga.put("/v1/datasets/hospital/budgets/ann", json={"epsilon": True}), 400,
                 "invalid_parameter")
    assert_error(olga.put("/v1/datasets/hospital/budgets/ann",
                          json={"epsilon": 1, "delta": 1.5}), 400, "invalid_parameter")
    assert_error(olga.put("/v1/datasets/hospital/budgets/nobody", json={"epsilon": 1}), 404,
                 "not_found")
    assert clients["ann"].get("/v1/budgets").json()["budgets"][0]["total"]["epsilon"] == 3


def test_admin_manages_users_tokens_and_grants(domain, clients):
    root = clients["root"]
    created = root.post("/v1/users", json={"name": "carol", "role": "analyst",
                                           "password": "carol-secret"})
    assert created.status_code == 200
    token = created.json()["token"]
    carol = domain.client()
    carol.headers["Authorization"] = f"Bearer {token}"
    assert carol.get("/v1/datasets").json()["datasets"] == []
    assert root.put("/v1/users/carol/grants/hospital/query").status_code == 200
    assert [d["name"] for d in carol.get("/v1/datasets").json()["datasets"]] == ["hospital"]
    assert_error(root.put("/v1/users/carol/grants/hospital/own"), 400, "invalid_parameter")
    assert_error(root.put("/v1/users/carol/grants/hospital/write"), 400, "invalid_parameter")
    assert_error(root.post("/v1/users", json={"name": "carol", "role": "analyst"}), 409,
                 "conflict")
    assert_error(root.post("/v1/users", json={"name": "bad name", "role": "analyst"}), 400,
                 "invalid_parameter")
    assert_error(root.post("/v1/users", json={"name": "x1", "role": "god"}), 400,
                 "invalid_parameter")
    second = root.post("/v1/users/carol/tokens", json={"label": "laptop"}).json()
    assert second["token"] != token and len(second["token_id"]) == 12
    tokens = root.get("/v1/users/carol/tokens").json()["tokens"]
    assert len(tokens) == 2 and all("token" not in t for t in tokens)
    assert token not in root.get("/v1/users/carol").text
    assert root.delete(f"/v1/users/carol/tokens/{second['token_id']}").status_code == 200
    assert_error(root.delete("/v1/users/carol/tokens/zzz"), 400, "invalid_parameter")
    assert root.put("/v1/users/carol/password", json={"password": "another-one"}).status_code \
        == 200
    assert_error(root.put("/v1/users/carol/password", json={"password": "short"}), 400,
                 "invalid_parameter")
    assert_error(root.delete("/v1/users/root"), 400, "invalid_parameter")
    assert {u["name"] for u in root.get("/v1/users").json()["users"]} >= {"carol", "root"}
    assert_error(clients["olga"].post("/v1/users", json={"name": "z", "role": "owner"}), 403,
                 "permission_denied")
    assert SECRET_NOTE not in root.get("/v1/audit?limit=1000").text


def test_owner_drops_their_dataset(domain, clients):
    olga = clients["olga"]
    assert olga.delete("/v1/datasets/hospital").json() == {"dropped": "hospital"}
    assert clients["ann"].get("/v1/datasets").json()["datasets"] == []
    assert domain.state.users.grants("hospital") == []


@pytest.mark.parametrize("path", ["/v1/health", "/v1/openapi.json"])
def test_public_routes_need_no_token(domain, path):
    assert domain.client().get(path).status_code == 200

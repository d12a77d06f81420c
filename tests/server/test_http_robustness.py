"""Every documented route answers bad input with a JSON error, never a 500 or a data value."""
from __future__ import annotations

import re

import pytest

from tests.server.conftest import SECRET_NOTE, make_domain
from server.http.openapi import PATHS

PUBLIC = {"/v1/health", "/v1/openapi.json"}
OPERATIONS = [(path, method) for path, ops in PATHS.items() for method in ops]


def _fill(path: str) -> str:
    return re.sub(r"{(\w+)}", lambda m: {"name": "hospital", "table": "patients",
                                         "analyst": "ann"}.get(m.group(1), "x"), path)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    # One domain for every route: calls may change it (even drop the dataset), which is fine
    # because the property checked holds in any state.
    domain = make_domain(tmp_path_factory.mktemp("fuzz") / "home")
    yield domain, {name: domain.client(name) for name in ("eve", "ann", "olga")}
    domain.state.close()


@pytest.mark.parametrize("path,method", OPERATIONS)
def test_routes_refuse_garbage_with_json(shared, path, method):
    domain, clients = shared
    url = _fill(path)
    anonymous = domain.client().request(method.upper(), url)
    if path in PUBLIC:
        assert anonymous.status_code == 200
        return
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "authentication_failed"
    for user in ("eve", "ann", "olga"):
        for body in (b"{", b"[]", b'{"sql": {"a": 1}, "epsilon": "x", "metadata": 3}'):
            response = clients[user].request(method.upper(), url, content=body,
                                             headers={"Content-Type": "application/json"})
            assert response.status_code < 500, (user, url, response.text)
            if response.status_code >= 400:
                error = response.json()["error"]
                assert error["code"] and error["message"] and error["sqlstate"]
            assert SECRET_NOTE not in response.text


def test_statement_timeout_stops_an_approved_run(tmp_path):
    domain = make_domain(tmp_path / "slow", statement_timeout_s=0.5)
    try:
        ann, olga = domain.client("ann"), domain.client("olga")
        heavy = ("SELECT COUNT(*) AS n FROM patients a, patients b, patients c, patients d, "
                 "patients e WHERE a.age + b.age + c.age + d.age + e.age > -1")
        rid = ann.post("/v1/requests", json={"dataset": "hospital", "kind": "exact",
                                             "sql": heavy, "purpose": "p"}).json()["id"]
        body = olga.post(f"/v1/requests/{rid}/approve", json={"reason": "ok"}).json()
        assert body["status"] == "failed" and body["error_code"] == "query_canceled"
    finally:
        domain.state.close()

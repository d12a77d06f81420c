"""The router behind the shared front ends: HTTP /v1 and PG wire, and the `router` command."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from server.http.app import create_app
from server.router.frontend import open_router_state
from tests._require import require_module
from tests.router.conftest import DOMAINS
from tests.router.servers import BackgroundServer

PASSWORD = "ana-router-pw-1"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def router_state(federation, tmp_path_factory):
    state = open_router_state(tmp_path_factory.mktemp("router-home"), federation.router())
    state.users.create_user("ana", "analyst", password=PASSWORD)
    state.users.create_user("pia", "analyst", password=PASSWORD)
    state.users.create_user("ned", "analyst")
    state.users.grant("ana", "clinic", "query")
    state.users.grant("pia", "clinic", "query")
    yield state
    state.uploads.close()


def test_http_api_serves_federated_answers(federation, router_state):
    token = router_state.users.issue_token("ana")
    other = router_state.users.issue_token("ned")
    with BackgroundServer(create_app(router_state)) as server, \
            httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.post("/v1/query", json={"sql": "SELECT COUNT(*) FROM visits"}
                           ).status_code == 401
        headers = {"Authorization": f"Bearer {token}"}
        answer = client.post("/v1/query", headers=headers, json={
            "sql": "SELECT ward, COUNT(*) AS n FROM visits GROUP BY ward", "epsilon": 2})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert [c["name"] for c in body["columns"]] == ["ward", "n"]
        assert len(body["rows"]) == 4 and body["cost"]["epsilon"] == 2
        assert all(federation.gateways[d].budget("ana", "clinic").queries == 1 for d in DOMAINS)
        listed = client.get("/v1/datasets", headers=headers).json()
        assert [d["name"] for d in listed["datasets"]] == ["clinic"]
        mock = client.get("/v1/datasets/clinic/tables/visits/mock?rows=5", headers=headers)
        assert mock.status_code == 200, mock.text
        schema = client.get("/v1/datasets/clinic", headers=headers).json()
        assert schema["budget"] == {"epsilon": 1000.0, "delta": 1e-5}  # the tightest default
        budgets = client.get("/v1/budgets", headers=headers).json()["budgets"]
        assert budgets[0]["remaining_epsilon"] == pytest.approx(998)
        assert sorted(budgets[0]["domains"]) == sorted(DOMAINS)
        # A user without the grant sees no dataset and gets "no such table".
        denied = client.post("/v1/query", headers={"Authorization": f"Bearer {other}"},
                             json={"sql": "SELECT COUNT(*) FROM visits"})
        assert denied.status_code == 404 and denied.json()["error"]["code"] == "undefined_table"
        assert federation.gateways["a"].budget("ned", "clinic").queries == 0
        # Errors from a domain come back typed, with the domain named; nothing released.
        federation.gateways["b"].set_budget("ana", "clinic", _budget(0.1), set_by="owner-b")
        refused = client.post("/v1/query", headers=headers,
                              json={"sql": "SELECT COUNT(*) FROM visits", "epsilon": 1})
        assert refused.status_code == 402
        error = refused.json()["error"]
        assert error["code"] == "budget_exhausted" and "'b'" in error["message"]
    assert router_state.audit.verify().ok


def _budget(epsilon: float):
    from sqlgate.metadata import Budget
    return Budget(epsilon, 0.0)


def test_pg_wire_serves_federated_answers(federation, router_state):
    psycopg = require_module("psycopg")
    from server.pgwire import PgWireServer
    server = PgWireServer(router_state.service, host="127.0.0.1", port=0).start_in_thread()
    try:
        dsn = f"postgresql://pia:{PASSWORD}@127.0.0.1:{server.port}/sqlgate"
        with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
            rows = conn.execute("SELECT sex, COUNT(*) AS n FROM visits GROUP BY sex").fetchall()
        assert sorted(row[0] for row in rows) == ["F", "M"]
        assert all(row[1] > 500 for row in rows)  # all three domains' patients, noised
        assert all(federation.gateways[d].budget("pia", "clinic").queries == 1 for d in DOMAINS)
    finally:
        server.stop()


def test_router_command_serves_http(federation, tmp_path):
    paths = federation.files.write(tmp_path / "configs")
    home = tmp_path / "router-home"
    from server.auth import UserStore
    users = UserStore(home / "users.sqlite")
    users.create_user("cli-ana", "analyst")
    users.grant("cli-ana", "clinic", "query")
    token = users.issue_token("cli-ana")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-m", "server.router", "router", "--router-home", str(home),
         "--config", str(paths["router"]), "--port", "0", "--no-pg", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    try:
        url = None
        for line in process.stdout:
            found = re.search(r"HTTP API on (http://127\.0\.0\.1:\d+)/v1", line)
            if found:
                url = found.group(1)
                break
        assert url, "the router did not announce its HTTP address"
        answer = httpx.post(f"{url}/v1/query", headers={"Authorization": f"Bearer {token}"},
                            json={"sql": "SELECT COUNT(*) AS n FROM visits", "epsilon": 1},
                            timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["columns"][0]["name"] == "n"
        # The router's own audit log recorded the query (its users and audit live in its home).
        from server.audit import AuditLog
        records = AuditLog.in_home(home).records(actor="cli-ana")
        assert any(r["dataset"] == "clinic" and r["decision"] == "ok" for r in records)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_federation_init_writes_consistent_files(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "server.router", "federation-init", "--domain",
         "x=http://127.0.0.1:1", "--domain", "y=http://127.0.0.1:2", "--noise-domain", "y",
         "--dataset", "clinic", "--out", str(tmp_path)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO,
        timeout=60)
    assert done.returncode == 0, done.stderr
    from server.router.config import load_domain_config, load_router_config
    router = load_router_config(tmp_path / "router.yaml")
    x = load_domain_config(tmp_path / "domain-x.yaml")
    y = load_domain_config(tmp_path / "domain-y.yaml")
    assert router.federation == x.federation == y.federation
    assert x.pair_keys["y"] == y.pair_keys["x"]
    assert oct((tmp_path / "router.yaml").stat().st_mode & 0o777) == "0o600"
    bad = subprocess.run(
        [sys.executable, "-m", "server.router", "federation-init", "--domain", "x=http://h:1",
         "--noise-domain", "z", "--dataset", "clinic", "--out", str(tmp_path / "bad")],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)), cwd=REPO,
        timeout=60)
    assert bad.returncode == 2 and "noise domain" in bad.stderr

"""Password guessing is throttled on every front end that takes a password, with one shared
count per (name, address): HTTP Basic on /v1, Trino Basic, the console sign-in and PG wire.
(Review finding: only the console sign-in was throttled, so /v1 or Trino Basic auth let a
client guess passwords at network speed.)"""
from __future__ import annotations

import base64

import pytest

from server.console import routes as console_routes
from server.http.app import create_app
from server.pgwire import PgWireServer
from server.trino.routes import routes as trino_routes
from tests._require import require_module
from tests.server.conftest import assert_error

from starlette.testclient import TestClient


def _basic(name: str, password: str) -> dict:
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def app_client(domain):
    app = create_app(domain.state, extra_routes=[*trino_routes(domain.state),
                                                 *console_routes(domain.state)])
    return TestClient(app, raise_server_exceptions=False, client=("127.0.0.1", 50000))


def test_http_basic_guessing_is_throttled(domain, app_client):
    limit = domain.state.login_throttle.max_failures
    for _ in range(limit):
        assert_error(app_client.get("/v1/me", headers=_basic("ann", "wrong-guess")), 401,
                     "authentication_failed")
    # Locked out now, even with the right password; other users and tokens are unaffected.
    assert_error(app_client.get("/v1/me", headers=_basic("ann", "ann-password")), 429,
                 "too_many_requests")
    assert app_client.get("/v1/me", headers=_basic("bob", "bob-password")).status_code == 200
    bearer = {"Authorization": f"Bearer {domain.tokens['ann']}"}
    assert app_client.get("/v1/me", headers=bearer).status_code == 200
    refused = domain.state.audit.records(action="auth", decision="refused")
    assert len(refused) == limit + 1
    assert all("wrong-guess" not in str(r) and "ann-password" not in str(r) for r in refused)


def test_a_success_clears_the_count(domain, app_client):
    limit = domain.state.login_throttle.max_failures
    for _ in range(limit - 1):
        app_client.get("/v1/me", headers=_basic("bob", "nope-nope"))
    assert app_client.get("/v1/me", headers=_basic("bob", "bob-password")).status_code == 200
    for _ in range(limit - 1):
        app_client.get("/v1/me", headers=_basic("bob", "nope-nope"))
    assert app_client.get("/v1/me", headers=_basic("bob", "bob-password")).status_code == 200


def test_trino_basic_shares_the_count_and_is_audited(domain, app_client):
    limit = domain.state.login_throttle.max_failures
    for _ in range(limit):
        response = app_client.post("/v1/statement", content=b"SELECT 1",
                                   headers=_basic("eve", "guess-guess"))
        assert response.status_code == 401
    response = app_client.post("/v1/statement", content=b"SELECT 1",
                               headers=_basic("eve", "eve-password"))
    assert response.status_code == 429
    # The same name from the same address is locked on /v1 and the console as well.
    assert_error(app_client.get("/v1/me", headers=_basic("eve", "eve-password")), 429,
                 "too_many_requests")
    login = app_client.post("/console/api/login", json={"name": "eve",
                                                        "password": "eve-password"})
    assert login.status_code == 429
    trino = domain.state.audit.records(channel="trino", action="auth")
    assert len(trino) == limit + 1
    assert {r["actor"] for r in trino} == {"eve"}
    assert all("guess-guess" not in str(r) for r in trino)


def test_console_failures_count_for_http_basic(domain, app_client):
    limit = domain.state.login_throttle.max_failures
    for _ in range(limit):
        response = app_client.post("/console/api/login", json={"name": "bob",
                                                               "password": "not-it-at-all"})
        assert response.status_code == 401
    assert_error(app_client.get("/v1/me", headers=_basic("bob", "bob-password")), 429,
                 "too_many_requests")


def test_pgwire_logins_share_the_throttle(domain):
    psycopg = require_module("psycopg")
    state = domain.state
    server = PgWireServer(state.service, host="127.0.0.1", port=0,
                          login_throttle=state.login_throttle).start_in_thread()
    try:
        def dsn(password: str) -> str:
            return f"postgresql://ann:{password}@127.0.0.1:{server.port}/sqlgate"

        for _ in range(state.login_throttle.max_failures):
            with pytest.raises(psycopg.OperationalError, match="password authentication"):
                psycopg.connect(dsn("wrong-guess"), connect_timeout=10)
        with pytest.raises(psycopg.OperationalError, match="too many failed sign-ins"):
            psycopg.connect(dsn("ann-password"), connect_timeout=10)
        refused = state.audit.records(channel="pgwire", action="login", decision="refused")
        assert [r["code"] for r in refused][-1] == "too_many_requests"
        # Another user still gets in.
        with psycopg.connect(f"postgresql://bob:bob-password@127.0.0.1:{server.port}/sqlgate",
                             connect_timeout=10) as conn:
            assert conn.execute("SELECT 1").fetchall() == [(1,)]
    finally:
        server.stop()

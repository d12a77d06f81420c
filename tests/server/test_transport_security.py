"""Passwords are refused over plain HTTP from other hosts (review finding: `sqlgate serve`
bound to a public address took HTTP Basic and console passwords in clear).

Covers /v1 Basic, Trino Basic and the console sign-in; bearer tokens stay allowed; TLS
(https), loopback clients and `allow_insecure_passwords` lift the refusal; the refusal is
audited and never counts as a failed password."""
from __future__ import annotations

import base64

import pytest
from starlette.testclient import TestClient

from server.console import routes as console_routes
from server.http.app import create_app
from server.http.transport import is_loopback_host
from server.serve import plaintext_warning
from server.state import ServerConfig
from server.trino.routes import routes as trino_routes
from sqlgate.errors import InvalidParameter
from tests.server.conftest import assert_error, make_domain

REMOTE = ("203.0.113.7", 40000)      # TEST-NET-3: a client on another host
LOOPBACK = ("127.0.0.1", 40000)


def _basic(name: str, password: str) -> dict:
    token = base64.b64encode(f"{name}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _app(domain):
    return create_app(domain.state, extra_routes=[*trino_routes(domain.state),
                                                 *console_routes(domain.state)])


def _client(app, peer, scheme="http") -> TestClient:
    return TestClient(app, base_url=f"{scheme}://sqlgate.example", client=peer,
                      raise_server_exceptions=False)


@pytest.fixture
def insecure_domain(tmp_path):
    d = make_domain(tmp_path / "insecure-home", allow_insecure_passwords=True)
    yield d
    d.state.close()


def test_v1_basic_over_plain_http_from_another_host_is_refused(domain):
    remote = _client(_app(domain), REMOTE)
    error = assert_error(remote.get("/v1/me", headers=_basic("ann", "ann-password")), 403,
                         "insecure_transport")
    assert "TLS" in error["hint"] or "HTTPS" in error["hint"]
    assert "Bearer" in error["hint"]
    # A wrong password gets the same refusal: nothing about the password is checked.
    assert_error(remote.get("/v1/me", headers=_basic("ann", "not-her-password")), 403,
                 "insecure_transport")
    # The refusal is audited as an auth refusal, without the password.
    [*_, record] = domain.state.audit.records(action="auth", decision="refused")
    assert record["code"] == "insecure_transport" and record["source"].startswith("203.0.113.7")
    assert "ann-password" not in str(record)
    # Bearer tokens are still accepted from the same peer.
    bearer = {"Authorization": f"Bearer {domain.tokens['ann']}"}
    assert remote.get("/v1/me", headers=bearer).json()["name"] == "ann"


def test_refusals_do_not_count_as_failed_logins(domain):
    remote = _client(_app(domain), REMOTE)
    for _ in range(domain.state.login_throttle.max_failures + 2):
        assert remote.get("/v1/me", headers=_basic("ann", "guess")).status_code == 403
    # Not locked out: the same name and address still signs in over TLS.
    secure = _client(_app(domain), REMOTE, scheme="https")
    assert secure.get("/v1/me", headers=_basic("ann", "ann-password")).status_code == 200


def test_tls_and_loopback_clients_may_use_passwords(domain):
    app = _app(domain)
    for client in (_client(app, REMOTE, scheme="https"), _client(app, LOOPBACK),
                   _client(app, ("::1", 40000)), _client(app, ("::ffff:127.0.0.1", 40000))):
        response = client.get("/v1/me", headers=_basic("bob", "bob-password"))
        assert response.status_code == 200, response.text
        assert response.json()["name"] == "bob"
        # A wrong password is still a plain 401 there.
        assert_error(client.get("/v1/me", headers=_basic("bob", "wrong")), 401,
                     "authentication_failed")


def test_trino_basic_over_plain_http_from_another_host_is_refused(domain):
    remote = _client(_app(domain), REMOTE)
    response = remote.post("/v1/statement", content=b"SELECT 1",
                           headers=_basic("ann", "ann-password") | {"X-Trino-User": "ann"})
    assert response.status_code == 403
    assert "www-authenticate" not in response.headers
    assert response.json()["error"]["code"] == "insecure_transport"
    [*_, record] = domain.state.audit.records(channel="trino", action="auth")
    assert record["code"] == "insecure_transport" and record["actor"] == "ann"
    # Tokens work from there; Basic works over TLS.
    bearer = {"Authorization": f"Bearer {domain.tokens['ann']}", "X-Trino-User": "ann"}
    assert remote.post("/v1/statement", content=b"SELECT 1", headers=bearer).status_code == 200
    secure = _client(_app(domain), REMOTE, scheme="https")
    ok = secure.post("/v1/statement", content=b"SELECT 1",
                     headers=_basic("ann", "ann-password") | {"X-Trino-User": "ann"})
    assert ok.status_code == 200 and "error" not in ok.json()


def test_trino_on_a_bare_service_refuses_remote_passwords_too(domain):
    # routes(service) has no server config: the safe default applies.
    from starlette.applications import Starlette
    remote = _client(Starlette(routes=trino_routes(domain.state.service)), REMOTE)
    response = remote.post("/v1/statement", content=b"SELECT 1",
                           headers=_basic("ann", "ann-password"))
    assert response.status_code == 403


def test_console_sign_in_over_plain_http_from_another_host_is_refused(domain):
    remote = _client(_app(domain), REMOTE)
    before = len(domain.state.users.tokens("ann"))
    response = remote.post("/console/api/login", json={"name": "ann",
                                                        "password": "ann-password"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "insecure_transport"
    assert len(domain.state.users.tokens("ann")) == before          # no token was issued
    [*_, record] = domain.state.audit.records(channel="console", action="login")
    assert record["decision"] == "refused" and record["code"] == "insecure_transport"
    secure = _client(_app(domain), REMOTE, scheme="https")
    signed_in = secure.post("/console/api/login", json={"name": "ann",
                                                         "password": "ann-password"})
    assert signed_in.status_code == 200 and signed_in.json()["user"]["name"] == "ann"


def test_the_operator_can_allow_insecure_passwords(insecure_domain):
    remote = _client(_app(insecure_domain), REMOTE)
    assert remote.get("/v1/me", headers=_basic("ann", "ann-password")).status_code == 200
    trino = remote.post("/v1/statement", content=b"SELECT 1",
                        headers=_basic("ann", "ann-password"))
    assert trino.status_code == 200
    login = remote.post("/console/api/login", json={"name": "ann", "password": "ann-password"})
    assert login.status_code == 200


def test_loopback_detection():
    for host in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "localhost", "[::1]"):
        assert is_loopback_host(host), host
    for host in ("203.0.113.7", "10.0.0.1", "::ffff:10.0.0.1", "2001:db8::1", "0.0.0.0", "::",
                 "testclient", "", None):
        assert not is_loopback_host(host), host


def test_startup_warning_when_reachable_without_tls():
    assert plaintext_warning("127.0.0.1", tls=False, allow_insecure_passwords=False) is None
    assert plaintext_warning("0.0.0.0", tls=True, allow_insecure_passwords=False) is None
    refused = plaintext_warning("0.0.0.0", tls=False, allow_insecure_passwords=False)
    assert refused and "WARNING" in refused and "refused" in refused
    allowed = plaintext_warning("192.0.2.1", tls=False, allow_insecure_passwords=True)
    assert allowed and "ALLOWED" in allowed


def test_cli_flag_and_environment(monkeypatch):
    from sqlgate.cli import _parser
    monkeypatch.delenv("SQLGATE_ALLOW_INSECURE_PASSWORDS", raising=False)
    assert _parser().parse_args(["serve"]).allow_insecure_passwords is False
    assert _parser().parse_args(["serve", "--allow-insecure-passwords"]).allow_insecure_passwords
    monkeypatch.setenv("SQLGATE_ALLOW_INSECURE_PASSWORDS", "1")
    assert _parser().parse_args(["serve"]).allow_insecure_passwords is True
    monkeypatch.setenv("SQLGATE_ALLOW_INSECURE_PASSWORDS", "maybe")
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve"])


def test_config_validates_the_flag():
    assert ServerConfig.from_options().allow_insecure_passwords is False
    with pytest.raises(InvalidParameter):
        ServerConfig.from_options(allow_insecure_passwords="yes")


def test_serve_command_warns_and_passes_the_settings(tmp_path, monkeypatch, capsys):
    """`sqlgate serve --host 0.0.0.0` without TLS prints the warning and hands every new
    setting to the server state (serve itself is replaced: nothing binds)."""
    from server import serve as serve_module
    from sqlgate.cli import main as cli_main

    seen = {}

    def fake_serve(state, host, port, pg_port, **options):
        seen.update(config=state.config, host=host)

    monkeypatch.setattr(serve_module, "serve", fake_serve)
    for name in ("SQLGATE_ALLOW_INSECURE_PASSWORDS", "SQLGATE_PG_STARTUP_TIMEOUT",
                 "SQLGATE_PG_MAX_UNAUTHENTICATED"):
        monkeypatch.delenv(name, raising=False)
    home = str(tmp_path / "home")
    assert cli_main(["--home", home, "serve", "--host", "0.0.0.0", "--no-plugins",
                     "--max-pending-requests", "5", "--max-upload-sessions", "2",
                     "--max-upload-total-bytes", "1000", "--pg-startup-timeout", "3",
                     "--pg-max-unauthenticated", "4"]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "0.0.0.0" in err and "without TLS" in err
    config = seen["config"]
    assert seen["host"] == "0.0.0.0" and config.allow_insecure_passwords is False
    assert (config.max_pending_requests_per_user, config.max_upload_sessions_per_owner,
            config.max_upload_total_bytes, config.pg_startup_timeout_s,
            config.pg_max_unauthenticated_per_address) == (5, 2, 1000, 3.0, 4)
    # On loopback there is nothing to warn about.
    assert cli_main(["--home", home, "serve", "--host", "127.0.0.1", "--no-plugins"]) == 0
    assert "WARNING" not in capsys.readouterr().err

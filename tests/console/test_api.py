"""/console/api on a real server: password sign-in, sign-out, owners' ledger history."""
from __future__ import annotations

import httpx
import pytest

from tests.console.server import (ANALYST, ANALYST_PASSWORD, DATASET, OTHER_ANALYST, OWNER,
                                  OWNER_PASSWORD)


def login(server, name, password):
    return httpx.post(server.url + "/console/api/login", json={"name": name, "password": password})


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_login_issues_a_working_token_and_is_audited(console_server):
    response = login(console_server, ANALYST, ANALYST_PASSWORD)
    assert response.status_code == 200
    body = response.json()
    assert body["user"] == {"name": ANALYST, "role": "analyst"}
    me = httpx.get(console_server.url + "/v1/me", headers=bearer(body["token"]))
    assert me.status_code == 200 and me.json()["name"] == ANALYST
    assert response.headers["cache-control"] == "no-store"
    records = console_server.state.audit.records(actor=ANALYST, action="login")
    assert records and records[-1]["decision"] == "ok" and records[-1]["channel"] == "console"
    assert body["token"] not in str(records)


@pytest.mark.parametrize("name,password", [(ANALYST, "wrong-password"),
                                           ("nobody", "whatever-password")])
def test_wrong_credentials_are_refused_alike_and_audited(console_server, name, password):
    before = len(console_server.state.audit.records(action="login", decision="refused"))
    response = login(console_server, name, password)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "authentication_failed"
    assert error["message"] == "user name or password is wrong"
    refused = console_server.state.audit.records(action="login", decision="refused")
    assert len(refused) == before + 1 and refused[-1]["actor"] == name
    assert password not in str(refused[-1])


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"name": "alan"}',
                                  b'{"name": 5, "password": "x"}', b"{" + b" " * 20000 + b"}",
                                  b"[" * 8000 + b"]" * 8000])
def test_bad_login_bodies_are_clear_errors(console_server, body):
    response = httpx.post(console_server.url + "/console/api/login", content=body,
                          headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 413)
    assert response.json()["error"]["code"] in ("invalid_parameter", "limit_exceeded")


def test_logout_revokes_exactly_that_token(console_server):
    first = login(console_server, ANALYST, ANALYST_PASSWORD).json()["token"]
    second = login(console_server, ANALYST, ANALYST_PASSWORD).json()["token"]
    out = httpx.post(console_server.url + "/console/api/logout", headers=bearer(first))
    assert out.status_code == 200
    assert httpx.get(console_server.url + "/v1/me", headers=bearer(first)).status_code == 401
    assert httpx.get(console_server.url + "/v1/me", headers=bearer(second)).status_code == 200
    again = httpx.post(console_server.url + "/console/api/logout", headers=bearer(first))
    assert again.status_code == 401


def test_spend_history_is_for_owners_of_the_dataset_only(console_server):
    url = console_server.url
    analyst = login(console_server, ANALYST, ANALYST_PASSWORD).json()["token"]
    owner = login(console_server, OWNER, OWNER_PASSWORD).json()["token"]
    other = login(console_server, OTHER_ANALYST, "betty-password-1").json()["token"]
    ran = httpx.post(url + "/v1/query", headers=bearer(analyst), json={
        "sql": "SELECT COUNT(*) AS n FROM patients WHERE age > 40", "epsilon": 0.25})
    assert ran.status_code == 200, ran.text

    spend = httpx.get(url + "/console/api/spend", params={"dataset": DATASET},
                      headers=bearer(owner))
    assert spend.status_code == 200, spend.text
    body = spend.json()
    assert body["dataset"] == DATASET and ANALYST in body["analysts"]
    mine = [c for c in body["charges"] if c["analyst"] == ANALYST]
    assert any(c["epsilon"] == pytest.approx(0.25) for c in mine)
    assert set(mine[0]) == {"analyst", "at", "measure", "epsilon", "delta", "rho"}  # no query text

    # An analyst with a grant is told no; one without cannot even learn the dataset exists.
    denied = httpx.get(url + "/console/api/spend", params={"dataset": DATASET},
                       headers=bearer(analyst))
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "permission_denied"
    audit = console_server.state.audit
    assert audit.records(actor=ANALYST, action="spend_history")[-1]["decision"] == "refused"
    assert audit.records(actor=OWNER, action="spend_history")[-1]["decision"] == "ok"
    hidden = httpx.get(url + "/console/api/spend", params={"dataset": DATASET},
                       headers=bearer(other))
    assert hidden.status_code == 404
    missing = httpx.get(url + "/console/api/spend", headers=bearer(owner))
    assert missing.status_code == 400
    anonymous = httpx.get(url + "/console/api/spend", params={"dataset": DATASET})
    assert anonymous.status_code == 401


def test_console_is_served_next_to_the_api(console_server):
    page = httpx.get(console_server.console)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "content-security-policy" in page.headers
    assert httpx.get(console_server.url + "/v1/health").status_code == 200


def test_repeated_failures_lock_that_name_from_that_address(console_server):
    users = console_server.state.users
    users.create_user("carol", "analyst", password="carol-password-1")
    for _ in range(5):
        assert login(console_server, "carol", "guess-guess").status_code == 401
    locked = login(console_server, "carol", "carol-password-1")   # even the right password
    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "too_many_requests"
    assert login(console_server, OWNER, OWNER_PASSWORD).status_code == 200   # others unaffected
    refused = console_server.state.audit.records(actor="carol", action="login")
    assert [r["code"] for r in refused][-2:] == ["authentication_failed", "too_many_requests"]


def test_throttle_window_and_reset():
    from server.console.throttle import LoginThrottle
    from sqlgate.errors import TooManyRequests

    now = [1000.0]
    throttle = LoginThrottle(max_failures=3, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        throttle.check("Dan", "10.0.0.1")
        throttle.failed("Dan", "10.0.0.1")
    with pytest.raises(TooManyRequests):
        throttle.check("dan", "10.0.0.1")            # names are case-insensitive
    throttle.check("dan", "10.0.0.2")                # another address is not locked
    now[0] += 61                                     # the window passed
    throttle.check("dan", "10.0.0.1")
    throttle.failed("dan", "10.0.0.1")
    throttle.failed("dan", "10.0.0.1")
    throttle.succeeded("dan", "10.0.0.1")            # success clears the count
    throttle.failed("dan", "10.0.0.1")
    throttle.check("dan", "10.0.0.1")


def test_throttle_memory_is_bounded_under_a_spray_of_names():
    """Review finding: the throttle now guards HTTP Basic, Trino and PG wire too, where a
    'name' can be kilobytes long and fresh for every request; entries must stay small and
    their number bounded, while a name being guessed right now stays locked."""
    from server.console.throttle import LoginThrottle
    from sqlgate.errors import TooManyRequests

    now = [0.0]
    throttle = LoginThrottle(max_failures=3, window_s=60, clock=lambda: now[0], max_keys=100)
    for i in range(1000):
        now[0] += 0.001
        throttle.failed(f"{i:04d}" + "x" * 5000, "10.0.0.9")
    assert len(throttle._failures) <= 100
    assert all(len(name) <= 64 for name, _ in throttle._failures)
    for _ in range(3):
        throttle.failed("dan", "10.0.0.1")
    with pytest.raises(TooManyRequests):
        throttle.check("dan", "10.0.0.1")
    for i in range(50):                               # fewer than the cap: dan is kept
        throttle.failed(f"spray{i}", "10.0.0.9")
    with pytest.raises(TooManyRequests):
        throttle.check("dan", "10.0.0.1")

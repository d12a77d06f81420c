"""`/v1/query` over a real uvicorn: a client that disconnects while its query runs cancels
it; cancelled before the charge, nothing is spent and the audit log records the cancel."""
from __future__ import annotations

import json
import socket
import threading

import pytest

from sqlgate.errors import QueryCanceled
from tests.router.servers import BackgroundServer
from tests.server.conftest import make_domain

SQL = "SELECT region, COUNT(*) AS n FROM hospital.patients GROUP BY region"
WAIT_S = 20.0   # a bound so a broken cancel fails the test instead of hanging it


@pytest.fixture
def served(tmp_path):
    domain = make_domain(tmp_path / "home")
    server = BackgroundServer(domain.app).start()
    yield domain, server
    server.stop()
    domain.state.close()


class _SlowExecutor:
    """Wraps the engine's `run`: blocks until the query's cancel event is set (what the real
    engine's watchdog reacts to), then lets the real run raise QueryCanceled."""

    def __init__(self, real_run):
        self.real_run = real_run
        self.entered = threading.Event()
        self.saw_cancel = threading.Event()

    def __call__(self, sql, *, cancel=None, **kwargs):
        self.entered.set()
        if cancel is not None and cancel.wait(WAIT_S):
            self.saw_cancel.set()
        return self.real_run(sql, cancel=cancel, **kwargs)


def _post_raw(port: int, token: str, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    sock.sendall(b"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Authorization: Bearer " + token.encode() + b"\r\n"
                 b"Content-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return sock


def _query_records(domain) -> list[dict]:
    return domain.state.audit.records(actor="ann", action="query", limit=1000)


def test_client_disconnect_cancels_the_query_before_any_charge(served, monkeypatch):
    domain, server = served
    executor = domain.state.gateway.executor
    slow = _SlowExecutor(executor.run)
    monkeypatch.setattr(executor, "run", slow)
    before = domain.state.gateway.budget("ann", "hospital")

    sock = _post_raw(server.port, domain.tokens["ann"], {"sql": SQL})
    assert slow.entered.wait(WAIT_S), "the query never reached the engine"
    sock.close()                                      # the client goes away mid-query

    assert slow.saw_cancel.wait(WAIT_S), "the disconnect did not cancel the query"
    records = []
    for _ in range(int(WAIT_S / 0.05)):               # the service audits after the engine
        records = _query_records(domain)
        if records:
            break
        threading.Event().wait(0.05)
    assert len(records) == 1
    record = records[0]
    assert record["decision"] == "refused" and record["code"] == QueryCanceled.code
    assert record["query"] == SQL and not record["epsilon"]
    after = domain.state.gateway.budget("ann", "hospital")
    assert after.spent_epsilon == before.spent_epsilon == 0.0
    assert after.spent_delta == before.spent_delta


def test_a_connected_client_still_gets_its_answer(served, monkeypatch):
    """The disconnect watch must not cancel queries whose client is still waiting."""
    domain, server = served
    executor = domain.state.gateway.executor
    real_run = executor.run
    seen_cancel: list[threading.Event] = []

    def slowish(sql, *, cancel=None, **kwargs):
        seen_cancel.append(cancel)
        # Longer than several disconnect polls, still connected.
        assert cancel is not None and not cancel.wait(0.5)
        return real_run(sql, cancel=cancel, **kwargs)

    monkeypatch.setattr(executor, "run", slowish)
    import httpx
    response = httpx.post(f"{server.url}/v1/query", json={"sql": SQL}, timeout=WAIT_S,
                          headers={"Authorization": f"Bearer {domain.tokens['ann']}"})
    assert response.status_code == 200, response.text
    assert len(response.json()["rows"]) == 4
    assert seen_cancel and not any(c.is_set() for c in seen_cancel)
    record = _query_records(domain)[-1]
    assert record["decision"] == "ok" and record["epsilon"] > 0
    assert domain.state.gateway.budget("ann", "hospital").spent_epsilon > 0

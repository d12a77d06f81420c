"""Disk quotas (review finding: analysts could file unlimited approval requests and owners
open unlimited upload sessions). Limits answer 429/413 JSON errors and leave state intact."""
from __future__ import annotations

import threading

import pytest

from server.requests import RequestStore
from server.state import ServerConfig
from sqlgate.errors import InvalidParameter, TooManyRequests
from tests.server.conftest import assert_error, make_domain

SQL = "SELECT region, COUNT(*) AS n FROM patients GROUP BY region"
SMALL_YAML = """
dataset: small{n}
budget: {{epsilon: 1.0, delta: 1.0e-6}}
tables:
  t:
    privacy_unit: pid
    columns:
      pid: int
      age: {{type: int, lower: 0, upper: 100}}
"""


def _request(client, purpose="check"):
    return client.post("/v1/requests", json={"dataset": "hospital", "kind": "exact",
                                             "sql": SQL, "purpose": purpose})


def _csv(rows: int) -> bytes:
    return ("pid,age\n" + "".join(f"{i},{i % 90}\n" for i in range(rows))).encode()


@pytest.fixture
def limited(tmp_path):
    d = make_domain(tmp_path / "home", max_pending_requests_per_user=3,
                    max_upload_sessions_per_owner=2, max_upload_bytes=4000,
                    max_upload_total_bytes=6000)
    yield d
    d.state.close()


def test_pending_requests_per_analyst_are_capped(limited):
    ann, bob, olga = limited.client("ann"), limited.client("bob"), limited.client("olga")
    ids = []
    for i in range(3):
        response = _request(ann, f"question {i}")
        assert response.status_code == 200, response.text
        ids.append(response.json()["id"])
    error = assert_error(_request(ann, "one too many"), 429, "too_many_requests")
    assert error["details"] == {"limit": 3, "pending": 3}
    assert "pending" in error["message"]
    # Nothing was stored for the refused one; other analysts are not affected.
    assert len(limited.state.requests.list(requester="ann")) == 3
    assert _request(bob).status_code == 200
    # Once an owner decides one, there is room again.
    assert olga.post(f"/v1/requests/{ids[0]}/deny", json={"reason": "no"}).status_code == 200
    assert _request(ann, "again").status_code == 200
    assert_error(_request(ann, "and again"), 429, "too_many_requests")
    refused = limited.state.audit.records(actor="ann", action="request.create",
                                          decision="refused")
    assert [r["code"] for r in refused] == ["too_many_requests", "too_many_requests"]


def test_the_pending_cap_holds_under_concurrent_creates(tmp_path):
    store = RequestStore(tmp_path / "requests.sqlite")
    outcomes: list[str] = []

    def create():
        for _ in range(5):
            try:
                store.create(requester="ann", dataset="d", kind="exact", sql="SELECT 1",
                             purpose="p", max_pending=10)
                outcomes.append("ok")
            except TooManyRequests:
                outcomes.append("refused")

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("ok") == 10 and outcomes.count("refused") == 20
    assert len(store.list(requester="ann", status="pending")) == 10
    # Without a limit (internal callers) the store does not refuse.
    store.create(requester="ann", dataset="d", kind="exact", sql="SELECT 1", purpose="p")


def test_upload_sessions_per_owner_are_capped(limited):
    oscar, olga = limited.client("oscar"), limited.client("olga")
    sessions = []
    for n in range(2):
        response = oscar.post("/v1/uploads", json={"metadata": SMALL_YAML.format(n=n)})
        assert response.status_code == 200, response.text
        sessions.append(response.json()["upload_id"])
    error = assert_error(oscar.post("/v1/uploads", json={"metadata": SMALL_YAML.format(n=9)}),
                         429, "too_many_requests")
    assert error["details"] == {"limit": 2, "open_sessions": 2}
    # The refused session left no directory behind; other owners are not affected.
    assert len(list(limited.state.uploads.root.iterdir())) == 2
    other = olga.post("/v1/uploads", json={"metadata": SMALL_YAML.format(n=5)})
    assert other.status_code == 200
    # Aborting (or committing) one makes room.
    assert oscar.delete(f"/v1/uploads/{sessions[0]}").status_code == 200
    assert oscar.post("/v1/uploads",
                      json={"metadata": SMALL_YAML.format(n=7)}).status_code == 200


def test_total_upload_bytes_are_capped(limited):
    oscar, olga = limited.client("oscar"), limited.client("olga")
    first = oscar.post("/v1/uploads", json={"metadata": SMALL_YAML.format(n=1)}).json()
    second = olga.post("/v1/uploads", json={"metadata": SMALL_YAML.format(n=2)}).json()
    body = _csv(500)
    assert 3000 < len(body) <= 4000                    # under the per-file cap of 4000
    put = oscar.put(f"/v1/uploads/{first['upload_id']}/tables/t", content=body,
                    headers={"Content-Type": "text/csv"})
    assert put.status_code == 200, put.text
    held = limited.state.uploads.held_bytes()
    assert held == len(body)

    def streamed():                                   # no Content-Length: checked per chunk
        for i in range(0, len(body), 500):
            yield body[i:i + 500]

    for content in (body, streamed()):
        error = assert_error(olga.put(f"/v1/uploads/{second['upload_id']}/tables/t",
                                      content=content, headers={"Content-Type": "text/csv"}),
                             413, "limit_exceeded")
        assert error["details"]["limit_bytes"] == 6000
        # The refused file is gone and the count is back where it was.
        assert limited.state.uploads.held_bytes() == held
        table = olga.get(f"/v1/uploads/{second['upload_id']}").json()["tables"][0]
        assert table["bytes_received"] == 0 and table["complete"] is False
    assert not any(p.name.startswith("t.") for p in
                   (limited.state.uploads.root / second["upload_id"]).iterdir())
    # Committing the first frees its bytes: the second upload now fits and commits.
    committed = oscar.post(f"/v1/uploads/{first['upload_id']}/commit")
    assert committed.status_code == 200, committed.text
    assert limited.state.uploads.held_bytes() == 0
    put = olga.put(f"/v1/uploads/{second['upload_id']}/tables/t", content=streamed(),
                   headers={"Content-Type": "text/csv"})
    assert put.status_code == 200, put.text
    assert olga.post(f"/v1/uploads/{second['upload_id']}/commit").status_code == 200


@pytest.mark.parametrize("option", ["max_pending_requests_per_user",
                                    "max_upload_sessions_per_owner", "max_upload_total_bytes",
                                    "pg_max_unauthenticated_per_address"])
def test_limits_must_be_positive_integers(option):
    assert getattr(ServerConfig.from_options(**{option: 5}), option) == 5
    for bad in (0, -1, 2.5, True, "10"):
        with pytest.raises(InvalidParameter):
            ServerConfig.from_options(**{option: bad})


def test_serve_flags_and_environment(monkeypatch):
    from sqlgate.cli import _parser
    for name in ("SQLGATE_MAX_PENDING_REQUESTS", "SQLGATE_MAX_UPLOAD_SESSIONS",
                 "SQLGATE_MAX_UPLOAD_TOTAL_BYTES"):
        monkeypatch.delenv(name, raising=False)
    args = _parser().parse_args(["serve"])
    defaults = ServerConfig()
    assert (args.max_pending_requests, args.max_upload_sessions, args.max_upload_total_bytes) \
        == (defaults.max_pending_requests_per_user, defaults.max_upload_sessions_per_owner,
            defaults.max_upload_total_bytes) == (100, 8, 16 << 30)
    monkeypatch.setenv("SQLGATE_MAX_PENDING_REQUESTS", "7")
    monkeypatch.setenv("SQLGATE_MAX_UPLOAD_SESSIONS", "3")
    monkeypatch.setenv("SQLGATE_MAX_UPLOAD_TOTAL_BYTES", "12345")
    args = _parser().parse_args(["serve", "--max-upload-sessions", "4"])
    assert (args.max_pending_requests, args.max_upload_sessions,
            args.max_upload_total_bytes) == (7, 4, 12345)

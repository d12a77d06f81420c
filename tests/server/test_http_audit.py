"""Every call is audited; owners read their datasets' records; the chain verifies and
detects tampering."""
from __future__ import annotations

import sqlite3

from sqlgate.cli import main as cli_main
from tests.server.conftest import SECRET_NOTE, assert_error

SQL = "SELECT region, COUNT(*) AS n FROM patients GROUP BY region"


def _mixed_session(domain, clients) -> int:
    """A bit of everything; returns how many HTTP calls it made."""
    ann, olga, root = clients["ann"], clients["olga"], clients["root"]
    calls = [
        lambda: ann.post("/v1/query", json={"sql": SQL}),
        lambda: ann.post("/v1/query", json={"sql": "SELECT * FROM patients"}),
        lambda: ann.post("/v1/explain", json={"sql": SQL}),
        lambda: ann.get("/v1/datasets/hospital/tables/patients/mock?rows=5"),
        lambda: ann.get("/v1/users"),
        lambda: domain.client().get("/v1/budgets", headers={"Authorization": "Bearer bad"}),
        lambda: olga.put("/v1/datasets/hospital/budgets/ann", json={"epsilon": 9}),
        lambda: root.post("/v1/users", json={"name": "dan", "role": "analyst"}),
        lambda: clients["oscar"].get("/v1/datasets/shop"),
    ]
    for call in calls:
        call()
    rid = ann.post("/v1/requests", json={"dataset": "hospital", "kind": "exact", "sql": SQL,
                                         "purpose": "audit test"}).json()["id"]
    olga.post(f"/v1/requests/{rid}/approve", json={"reason": "fine"})
    ann.get(f"/v1/requests/{rid}/result")
    ann.get(f"/v1/requests/{rid}/result")
    return len(calls) + 4


def test_every_call_is_audited_and_the_chain_verifies(domain, clients):
    before = domain.state.audit.head()["seq"]
    calls = _mixed_session(domain, clients)
    assert domain.state.audit.head()["seq"] - before == calls
    records = domain.state.audit.records(after_seq=before, limit=1000)
    by_action = {}
    for record in records:
        by_action.setdefault(record["action"], []).append(record)
    assert by_action["query"][0]["decision"] == "ok" and by_action["query"][0]["epsilon"] > 0
    assert by_action["query"][1]["decision"] == "refused"
    assert by_action["query"][1]["code"] == "refused_by_policy"
    assert by_action["users.list"][0]["decision"] == "refused"
    assert by_action["auth"][0]["actor"] is None
    assert by_action["budgets.set"][0]["details"]["analyst"] == "ann"
    assert [r["code"] for r in by_action["request.result"]] == [None, "result_gone"]
    assert all(r["source"] and r["channel"] == "http" for r in records)
    assert SECRET_NOTE not in str(records)
    head = domain.state.audit.head()["seq"]
    report = clients["root"].get("/v1/audit/verify").json()
    assert report["ok"] is True and report["records"] == head    # the verify call comes after
    assert cli_main(["--home", str(domain.state.home), "audit", "verify"]) == 0


def test_owners_read_only_their_datasets_records(domain, clients):
    _mixed_session(domain, clients)
    olga = clients["olga"].get("/v1/audit?limit=1000").json()["records"]
    assert olga and {r["dataset"] for r in olga} == {"hospital"}
    oscar = clients["oscar"].get("/v1/audit?limit=1000").json()["records"]
    assert {r["dataset"] for r in oscar} == {"shop"}
    everything = clients["root"].get("/v1/audit?limit=1000").json()["records"]
    assert any(r["dataset"] is None for r in everything)
    queries = clients["olga"].get("/v1/audit?action=query&actor=ann").json()["records"]
    assert queries and all(r["action"] == "query" and r["actor"] == "ann" for r in queries)
    paged = clients["root"].get("/v1/audit?limit=2&after_seq=3").json()["records"]
    assert [r["seq"] for r in paged] == [4, 5]
    assert_error(clients["olga"].get("/v1/audit?limit=0"), 400, "invalid_parameter")


def test_tampering_is_detected(domain, clients):
    _mixed_session(domain, clients)
    path = domain.state.home / "audit.sqlite"
    conn = sqlite3.connect(path)
    try:
        # The triggers refuse edits; a forger with file access drops them first.
        try:
            conn.execute("UPDATE audit SET decision = 'ok' WHERE seq = 2")
            raise AssertionError("the audit log accepted an update")
        except sqlite3.DatabaseError:
            pass
        conn.execute("DROP TRIGGER audit_no_update")
        conn.execute("UPDATE audit SET decision = 'ok' WHERE seq = 2")
        conn.commit()
    finally:
        conn.close()
    report = clients["root"].get("/v1/audit/verify").json()
    assert report["ok"] is False and report["first_bad_seq"] == 2
    assert cli_main(["--home", str(domain.state.home), "audit", "verify"]) == 1

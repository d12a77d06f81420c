"""Review findings on the /v1 front end: hostile-but-small bodies get a clear 4xx."""
from __future__ import annotations

from tests.server.conftest import assert_error


def test_deeply_nested_json_is_a_clear_400(domain):
    client = domain.client("ann")
    deep = ("[" * 100_000 + "]" * 100_000).encode()     # 200 kB, under the body limit
    for path in ("/v1/query", "/v1/explain", "/v1/requests"):
        response = client.post(path, content=b'{"sql": ' + deep + b"}",
                               headers={"content-type": "application/json"})
        error = assert_error(response, 400, "invalid_parameter")
        assert "nested too deeply" in error["message"]
    # The server is fine afterwards.
    assert client.get("/v1/budgets").status_code == 200


def test_dropping_a_dataset_denies_its_pending_requests(domain):
    """Review finding: pending requests outlived their dataset, so whoever later uploaded a
    dataset under the same name could approve them and release its rows to analysts who
    had asked about different data."""
    ann, olga, root = domain.client("ann"), domain.client("olga"), domain.client("root")
    created = ann.post("/v1/requests", json={
        "dataset": "hospital", "kind": "exact", "purpose": "check",
        "sql": "SELECT region, COUNT(*) AS n FROM patients GROUP BY region"})
    assert created.status_code == 200, created.text
    request_id = created.json()["id"]
    assert olga.delete("/v1/datasets/hospital").status_code == 200
    state = ann.get(f"/v1/requests/{request_id}").json()
    assert state["status"] == "denied" and state["reason"] == "the dataset was dropped"
    assert_error(root.post(f"/v1/requests/{request_id}/approve", json={"reason": "ok"}), 409,
                 "conflict")
    [record] = domain.state.audit.records(action="datasets.drop")
    assert record["details"]["denied_requests"] == 1


def test_cli_drop_also_revokes_grants_and_denies_pending_requests(tmp_path, capsys):
    """`sqlgate dataset drop` on a served domain leaves no grant and no approvable request."""
    from server.state import ServerState
    from sqlgate.cli import main
    from tests.server.conftest import make_domain

    home = tmp_path / "home"
    domain = make_domain(home)
    request = domain.state.requests.create(requester="ann", dataset="hospital", kind="exact",
                                           sql="SELECT COUNT(*) FROM patients", purpose="p")
    domain.state.close()
    assert main(["--home", str(home), "dataset", "drop", "hospital"]) == 0
    assert "denied 1 pending request" in capsys.readouterr().out
    again = ServerState.open(home)
    try:
        assert again.users.grants("hospital") == []
        assert again.requests.get(request.id).status == "denied"
        assert again.users.grants("shop")      # other datasets keep theirs
    finally:
        again.close()

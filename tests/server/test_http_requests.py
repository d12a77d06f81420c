"""The approval workflow over HTTP: nothing before approval, results fetched once."""
from __future__ import annotations

import threading

from server.requests import RequestStore
from tests.server.conftest import SECRET_NOTE, assert_error, patients_frame

EXACT_SQL = "SELECT region, COUNT(*) AS n FROM patients GROUP BY region ORDER BY region"
SAMPLE_SQL = "SELECT pid, age, note FROM patients ORDER BY pid"
# Training specs are checked at submission, so the runner tests need a valid one.
TRAIN_SQL = "SELECT age, region FROM patients"
TRAIN_SPEC = {"model": {"type": "logistic"}, "label": "region", "task": "multiclass",
              "optimizer": "sgd", "lr": 0.1, "epochs": 2, "batch_size": 16,
              "max_grad_norm": 1.0, "epsilon": 1.0, "delta": 1e-6}


def _create(client, **fields):
    body = {"dataset": "hospital", "kind": "exact", "sql": EXACT_SQL,
            "purpose": "check the DP counts", **fields}
    response = client.post("/v1/requests", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _truth_counts():
    frame = patients_frame()
    return sorted([r, int(n)] for r, n in frame.groupby("region").size().items())


def test_exact_request_end_to_end_once(domain, clients):
    ann, bob, olga = clients["ann"], clients["bob"], clients["olga"]
    request = _create(ann)
    assert request["status"] == "pending" and request["requester"] == "ann"
    rid = request["id"]
    # Nothing is released before approval.
    assert_error(ann.get(f"/v1/requests/{rid}/result"), 409, "conflict")
    # The analyst cannot approve or mock-run their own request; others cannot even see it.
    assert_error(ann.post(f"/v1/requests/{rid}/approve", json={"reason": "me"}), 403,
                 "permission_denied")
    assert_error(ann.post(f"/v1/requests/{rid}/mock-run", json={}), 403, "permission_denied")
    assert_error(bob.get(f"/v1/requests/{rid}"), 404, "not_found")
    assert_error(bob.post(f"/v1/requests/{rid}/approve", json={"reason": "x"}), 404, "not_found")
    assert_error(bob.get(f"/v1/requests/{rid}/result"), 404, "not_found")
    assert bob.get("/v1/requests").json()["requests"] == []
    assert_error(clients["oscar"].get(f"/v1/requests/{rid}"), 404, "not_found")
    assert_error(clients["oscar"].post(f"/v1/requests/{rid}/approve", json={"reason": "x"}),
                 404, "not_found")
    # The owner sees it, dry-runs it on mock data, then approves.
    assert [r["id"] for r in olga.get("/v1/requests?status=pending").json()["requests"]] == [rid]
    mock = olga.post(f"/v1/requests/{rid}/mock-run", json={"rows": 200})
    assert mock.status_code == 200 and mock.json()["mock"] is True
    assert sum(row[1] for row in mock.json()["rows"]) == 200
    assert_error(olga.post(f"/v1/requests/{rid}/approve", json={}), 400, "invalid_parameter")
    approved = olga.post(f"/v1/requests/{rid}/approve", json={"reason": "aggregate, fine"})
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert body["status"] == "done" and body["reviewer"] == "olga"
    assert body["summary"]["rows"] == 4 and "rows" not in body
    # The owner cannot fetch it; another analyst cannot; the requester gets it once.
    assert_error(olga.get(f"/v1/requests/{rid}/result"), 403, "permission_denied")
    assert_error(bob.get(f"/v1/requests/{rid}/result"), 404, "not_found")
    result = ann.get(f"/v1/requests/{rid}/result")
    assert result.status_code == 200
    assert result.json()["columns"] == ["region", "n"]
    assert sorted(result.json()["rows"]) == _truth_counts()
    error = assert_error(ann.get(f"/v1/requests/{rid}/result"), 410, "result_gone")
    assert "once" in error["message"]
    assert ann.get(f"/v1/requests/{rid}").json()["status"] == "fetched"
    assert_error(olga.post(f"/v1/requests/{rid}/approve", json={"reason": "again"}), 409,
                 "conflict")
    actions = [(r["action"], r["decision"]) for r in domain.state.audit.records(
        dataset="hospital", limit=1000) if r["action"].startswith("request.")]
    assert ("request.approve", "approved") in actions and ("request.result", "ok") in actions


def test_denied_request_never_releases(domain, clients):
    ann, olga = clients["ann"], clients["olga"]
    rid = _create(ann, kind="sample", sql=SAMPLE_SQL, spec={"rows": 5})["id"]
    denied = olga.post(f"/v1/requests/{rid}/deny", json={"reason": "row-level data"})
    assert denied.json()["status"] == "denied" and denied.json()["reason"] == "row-level data"
    assert_error(ann.get(f"/v1/requests/{rid}/result"), 409, "conflict")
    assert_error(olga.post(f"/v1/requests/{rid}/approve", json={"reason": "changed my mind"}),
                 409, "conflict")
    record = domain.state.audit.records(action="request.deny")[-1]
    assert record["decision"] == "denied" and record["actor"] == "olga"


def test_sample_request_is_bounded_and_csv(clients):
    ann, olga = clients["ann"], clients["olga"]
    assert_error(ann.post("/v1/requests", json={
        "dataset": "hospital", "kind": "sample", "sql": SAMPLE_SQL, "purpose": "look",
        "spec": {"rows": 10**9}}), 400, "invalid_parameter")
    rid = _create(ann, kind="sample", sql=SAMPLE_SQL, spec={"rows": 10})["id"]
    assert olga.post(f"/v1/requests/{rid}/approve", json={"reason": "ok"}).json()["summary"] == \
        {"rows": 10, "columns": ["pid", "age", "note"], "truncated": True}
    result = ann.get(f"/v1/requests/{rid}/result?format=csv")
    assert result.headers["content-type"].startswith("text/csv")
    lines = result.text.splitlines()
    assert lines[0] == "pid,age,note" and len(lines) == 11
    # The approved sample is the one place row values (even the secret) may reach the analyst.
    assert SECRET_NOTE in result.text


def test_bad_requests_are_refused(clients):
    ann, eve = clients["ann"], clients["eve"]
    base = {"dataset": "hospital", "kind": "exact", "sql": EXACT_SQL, "purpose": "p"}
    assert_error(ann.post("/v1/requests", json={**base, "kind": "everything"}), 400,
                 "invalid_parameter")
    assert_error(ann.post("/v1/requests", json={**base, "purpose": ""}), 400,
                 "invalid_parameter")
    assert_error(ann.post("/v1/requests", json={**base, "sql": "SELECT FROM WHERE ("}), 400, "syntax_error")
    assert_error(ann.post("/v1/requests", json={**base, "sql": "DELETE FROM patients"}), 403,
                 "read_only")
    assert_error(ann.post("/v1/requests", json={**base, "spec": [1]}), 400, "invalid_parameter")
    assert_error(ann.post("/v1/requests", json={**base, "dataset": "shop"}), 404, "not_found")
    assert_error(eve.post("/v1/requests", json=base), 404, "not_found")
    assert_error(ann.get("/v1/requests/nope"), 404, "not_found")
    assert_error(ann.get("/v1/requests?status=weird"), 400, "invalid_parameter")
    assert ann.get("/v1/requests").json()["requests"] == []


def test_failed_run_marks_request_failed_without_engine_text(clients):
    ann, olga = clients["ann"], clients["olga"]
    # Refused at run time: the approved SQL reaches outside the dataset.
    rid = _create(ann, sql="SELECT COUNT(*) FROM shop.orders")["id"]
    body = olga.post(f"/v1/requests/{rid}/approve", json={"reason": "ok"}).json()
    assert body["status"] == "failed" and body["error_code"]
    assert_error(ann.get(f"/v1/requests/{rid}/result"), 409, "conflict")
    # A cast that fails on a data value: the engine text (which would quote it) is withheld.
    rid = _create(ann, sql="SELECT CAST(note AS INTEGER) AS x FROM patients")["id"]
    body = olga.post(f"/v1/requests/{rid}/approve", json={"reason": "ok"}).json()
    assert body["status"] == "failed"
    assert SECRET_NOTE not in str(body) and "withheld" in body["error_message"]
    assert body["error_code"] == "execution_failed"


def test_training_needs_a_registered_runner(domain, clients):
    ann, olga = clients["ann"], clients["olga"]
    rid = _create(ann, kind="training", sql=TRAIN_SQL, spec=TRAIN_SPEC)["id"]
    error = assert_error(olga.post(f"/v1/requests/{rid}/approve", json={"reason": "ok"}), 503,
                         "runner_unavailable")
    assert "pending" in error["message"]
    assert ann.get(f"/v1/requests/{rid}").json()["status"] == "pending"

    finished = threading.Event()

    def runner(state, request):
        # A background runner: reports progress, then stores its artifact.
        def work():
            state.requests.set_progress(request.id, {"epoch": 1, "of": 2})
            state.requests.finish(request.id, b"model-bytes", "application/octet-stream",
                                  {"epochs": 2})
            finished.set()
        threading.Thread(target=work).start()

    domain.state.executors["training"] = runner
    olga.post(f"/v1/requests/{rid}/approve", json={"reason": "ok"})
    assert finished.wait(30)
    status = ann.get(f"/v1/requests/{rid}").json()
    assert status["status"] == "done" and status["progress"] == {"epoch": 1, "of": 2}
    fetched = ann.get(f"/v1/requests/{rid}/result")
    assert fetched.content == b"model-bytes"
    assert fetched.headers["content-type"] == "application/octet-stream"

    def crashing(state, request):
        raise RuntimeError(f"value {SECRET_NOTE}")

    domain.state.executors["training"] = crashing
    rid = _create(ann, kind="training", sql=TRAIN_SQL, spec=TRAIN_SPEC)["id"]
    body = olga.post(f"/v1/requests/{rid}/approve", json={"reason": "ok"}).json()
    assert body["status"] == "failed" and SECRET_NOTE not in str(body)


def test_requests_survive_a_restart(tmp_path):
    path = tmp_path / "requests.sqlite"
    store = RequestStore(path)
    made = store.create(requester="ann", dataset="hospital", kind="exact", sql="SELECT 1",
                        purpose="p")
    store.approve(made.id, "olga", "fine")
    store.start(made.id)
    store.finish(made.id, b"{}", "application/json", {"rows": 0})
    again = RequestStore(path)
    assert again.get(made.id).status == "done"
    assert again.fetch_result(made.id).body == b"{}"
    assert RequestStore(path).get(made.id).status == "fetched"
    assert again.list(requester="ann")[0].id == made.id
    assert again.list(datasets={"HOSPITAL"})[0].id == made.id
    assert again.list(datasets=set()) == []


def test_result_is_fetched_once_under_concurrency(tmp_path):
    store = RequestStore(tmp_path / "r.sqlite")
    made = store.create(requester="ann", dataset="d", kind="exact", sql="SELECT 1", purpose="p")
    store.approve(made.id, "olga", "ok")
    store.start(made.id)
    store.finish(made.id, b"secret", "application/json")
    outcomes = []

    def fetch():
        try:
            outcomes.append(store.fetch_result(made.id).body)
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(b"secret") == 1 and outcomes.count("ResultGone") == 7

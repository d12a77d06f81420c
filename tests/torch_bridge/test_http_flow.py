"""The whole approval flow over HTTP: submit -> cannot run before approval -> owner approves
-> progress -> download the safetensors weights once; deny and cancel too."""
from __future__ import annotations

import time

import pytest

from tests.torch_bridge._deps import require_torch_stack

require_torch_stack()

from starlette.testclient import TestClient  # noqa: E402

from server.http.app import create_app  # noqa: E402
from server.state import ServerState  # noqa: E402
from sqlgate.errors import Conflict, NotFound  # noqa: E402
from tests.torch_bridge.clinic import (TRAIN_SQL, clinic_frames, clinic_metadata,  # noqa: E402
                                       training_spec)
from tests.torch_bridge.conftest import accuracy  # noqa: E402
from torch_bridge.server_plugin import install, training_routes  # noqa: E402
from torch_bridge.spec import parse_training_spec  # noqa: E402
from torch_bridge.weights import CONTENT_TYPE, from_safetensors  # noqa: E402


@pytest.fixture()
def domain(tmp_path):
    state = ServerState.open(tmp_path / "domain")
    state.gateway.add_dataset(clinic_metadata(), clinic_frames(3000, seed=5))
    users = state.users
    users.create_user("olga", "owner")
    users.grant("olga", "clinic", "own")
    for analyst in ("alice", "bob"):
        users.create_user(analyst, "analyst")
        users.grant(analyst, "clinic", "query")
    tokens = {name: {"Authorization": f"Bearer {users.issue_token(name)}"}
              for name in ("olga", "alice", "bob")}
    jobs = install(state)
    with TestClient(create_app(state, extra_routes=training_routes(jobs))) as client:
        yield state, jobs, client, tokens
    state.close()


def submit(client, token, **spec_changes) -> dict:
    spec = training_spec(**spec_changes)
    sql = spec.pop("sql")
    response = client.post("/v1/requests", headers=token, json={
        "dataset": "clinic", "kind": "training", "sql": sql,
        "purpose": "risk model", "spec": spec})
    assert response.status_code == 200, response.text
    return response.json()


def wait_for(client, token, request_id, statuses, timeout=240.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/v1/requests/{request_id}", headers=token).json()
        if body["status"] in statuses or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def test_training_request_runs_only_after_approval_and_weights_download_once(domain, holdout):
    state, jobs, client, tokens = domain
    x, y, majority = holdout
    created = submit(client, tokens["alice"], epsilon=2.5, epochs=5)
    request_id = created["id"]
    assert created["status"] == "pending" and created["kind"] == "training"

    # Before approval nothing can run, nothing is charged, there is nothing to fetch.
    assert client.get(f"/v1/requests/{request_id}/result",
                      headers=tokens["alice"]).status_code == 409
    with pytest.raises(Conflict):
        state.requests.start(request_id)
    with pytest.raises(NotFound):
        jobs.get(request_id)
    assert client.post(f"/v1/requests/{request_id}/approve", headers=tokens["alice"],
                       json={"reason": "self"}).status_code in (403, 404)
    assert client.post(f"/v1/requests/{request_id}/cancel", headers=tokens["alice"],
                       json={}).status_code == 409
    assert state.gateway.budget("alice", "clinic").queries == 0

    approved = client.post(f"/v1/requests/{request_id}/approve", headers=tokens["olga"],
                           json={"reason": "aggregate model only"})
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] in ("running", "done")
    seen_epochs = set()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        body = client.get(f"/v1/requests/{request_id}", headers=tokens["alice"]).json()
        if body["progress"]:
            seen_epochs.add(body["progress"]["epoch"])
        if body["status"] != "running":
            break
        time.sleep(0.05)
    assert body["status"] == "done", body
    assert body["progress"]["epoch"] == 5 and body["progress"]["epsilon_spent"] <= 2.5
    assert seen_epochs and max(seen_epochs) == 5
    owner_view = client.get(f"/v1/requests/{request_id}", headers=tokens["olga"]).json()
    assert owner_view["summary"]["epsilon"] <= 2.5 and owner_view["result_available"]

    # Only the requester downloads, exactly once.
    assert client.get(f"/v1/requests/{request_id}/result",
                      headers=tokens["olga"]).status_code == 403
    download = client.get(f"/v1/requests/{request_id}/result", headers=tokens["alice"])
    assert download.status_code == 200
    assert download.headers["content-type"].startswith(CONTENT_TYPE)
    tensors, info = from_safetensors(download.content)
    spec = parse_training_spec(training_spec(epsilon=2.5, epochs=5))
    assert accuracy(tensors, spec, x, y) > majority + 0.10
    assert info["dataset"] == "clinic" and info["spec"]["sql"] == TRAIN_SQL
    again = client.get(f"/v1/requests/{request_id}/result", headers=tokens["alice"])
    assert again.status_code == 410 and again.json()["error"]["code"] == "result_gone"
    status = state.gateway.budget("alice", "clinic")
    assert status.queries == 1 and status.spent_epsilon == pytest.approx(2.5)


def test_denied_training_request_never_runs(domain):
    state, jobs, client, tokens = domain
    request_id = submit(client, tokens["bob"])["id"]
    denied = client.post(f"/v1/requests/{request_id}/deny", headers=tokens["olga"],
                         json={"reason": "too broad"})
    assert denied.status_code == 200 and denied.json()["status"] == "denied"
    again = client.post(f"/v1/requests/{request_id}/approve", headers=tokens["olga"],
                        json={"reason": "changed my mind"})
    assert again.status_code == 409
    assert client.get(f"/v1/requests/{request_id}/result",
                      headers=tokens["bob"]).status_code == 409
    with pytest.raises(NotFound):
        jobs.get(request_id)
    assert state.gateway.budget("bob", "clinic").queries == 0


def test_running_job_can_be_cancelled_and_stays_charged(domain):
    state, jobs, client, tokens = domain
    request_id = submit(client, tokens["alice"], epochs=300, epsilon=1.0)["id"]
    assert client.post(f"/v1/requests/{request_id}/approve", headers=tokens["olga"],
                       json={"reason": "ok"}).status_code == 200
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = client.get(f"/v1/requests/{request_id}", headers=tokens["alice"]).json()
        if body["progress"]:
            break
        time.sleep(0.05)
    assert body["progress"], body
    # Another analyst cannot even see it; the requester can cancel.
    assert client.post(f"/v1/requests/{request_id}/cancel", headers=tokens["bob"],
                       json={}).status_code == 404
    cancel = client.post(f"/v1/requests/{request_id}/cancel", headers=tokens["alice"], json={})
    assert cancel.status_code == 200, cancel.text
    body = wait_for(client, tokens["alice"], request_id, ("failed", "done"))
    assert body["status"] == "failed" and body["error_code"] == "query_canceled"
    assert "not refunded" in body["error_message"]
    assert client.get(f"/v1/requests/{request_id}/result",
                      headers=tokens["alice"]).status_code == 409
    assert state.gateway.budget("alice", "clinic").spent_epsilon == pytest.approx(1.0)


def test_invalid_spec_is_refused_at_submission_with_the_field_named(domain):
    state, jobs, client, tokens = domain
    spec = training_spec(epochs=0)
    sql = spec.pop("sql")
    response = client.post("/v1/requests", headers=tokens["alice"], json={
        "dataset": "clinic", "kind": "training", "sql": sql, "purpose": "risk model",
        "spec": spec})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter" and "'epochs'" in error["message"]
    # Nothing reached the owner's queue, nothing was charged.
    listed = client.get("/v1/requests", headers=tokens["olga"]).json()["requests"]
    assert all(r["spec"] != spec for r in listed)
    assert state.gateway.budget("alice", "clinic").queries == 0


def test_a_job_orphaned_by_a_restart_is_marked_failed(tmp_path):
    with ServerState.open(tmp_path / "restart") as state:
        request = state.requests.create(requester="alice", dataset="clinic", kind="training",
                                        sql=TRAIN_SQL, purpose="p", spec=training_spec())
        state.requests.approve(request.id, "olga", "ok")
        state.requests.start(request.id)        # the process died after this
        pending = state.requests.create(requester="alice", dataset="clinic", kind="training",
                                        sql=TRAIN_SQL, purpose="p", spec=training_spec())
        install(state)
        orphan = state.requests.get(request.id)
        assert orphan.status == "failed" and "not refunded" in orphan.error_message
        assert state.requests.get(pending.id).status == "pending"
        assert "training" in state.executors

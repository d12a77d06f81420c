"""Federated averaging of DP-SGD through the router: three domains (full domain servers with
their approval workflow) and a router on 127.0.0.1, the clinic dataset partitioned by patient."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest

from server.http.app import create_app
from server.router.bootstrap import federation_files
from server.router.config import parse_router_config
from server.router.errors import FederationFailed
from server.router.fedavg_http import federated_domain_routes
from server.router.fedavg_router import ApprovalRequired
from server.router.router import Router
from server.requests import ResultGone
from server.state import ServerState
from sqlgate.errors import BudgetExhausted, Conflict, InvalidParameter
from tests._require import require_module
from tests.router.servers import BackgroundServer, free_port
from tests.torch_bridge.clinic import clinic_frames, clinic_metadata, design_matrix, training_spec

DOMAINS = ("a", "b", "c")
API = "/v1/federated/training"
SPEC = training_spec(epochs=2, epsilon=3.0, lr=0.1)


@pytest.fixture(scope="module", autouse=True)
def torch_stack():
    for name in ("torch", "opacus", "safetensors"):
        require_module(name)


@dataclass
class Domain:
    name: str
    state: ServerState
    server: BackgroundServer
    owner_token: str

    @property
    def gateway(self):
        return self.state.gateway

    def approve(self, request_id: str) -> dict:
        answer = httpx.post(f"{self.server.url}/v1/requests/{request_id}/approve",
                            json={"reason": "fine for the federated study"}, timeout=30,
                            headers={"Authorization": f"Bearer {self.owner_token}"})
        assert answer.status_code == 200, answer.text
        return answer.json()

    def deny(self, request_id: str) -> None:
        answer = httpx.post(f"{self.server.url}/v1/requests/{request_id}/deny",
                            json={"reason": "not for this purpose"}, timeout=30,
                            headers={"Authorization": f"Bearer {self.owner_token}"})
        assert answer.status_code == 200, answer.text

    def request(self, request_id: str):
        return self.state.requests.get(request_id)

    def spent(self, analyst: str):
        return self.gateway.budget(analyst, "clinic")


@dataclass
class Env:
    files: object
    domains: dict[str, Domain]
    routers: list[Router] = field(default_factory=list)

    def router(self, observer=None) -> Router:
        router = Router(parse_router_config(self.files.router), observer=observer)
        self.routers.append(router)
        return router

    def approve_all(self, job) -> None:
        for name, domain in self.domains.items():
            domain.approve(job.requests[name])


@pytest.fixture(scope="module")
def env(tmp_path_factory, torch_stack):
    from torch_bridge.server_plugin import install, training_routes

    ports = {name: free_port() for name in DOMAINS}
    files = federation_files({n: f"http://127.0.0.1:{p}" for n, p in ports.items()},
                             noise_domain="a", datasets=["clinic"])
    paths = files.write(tmp_path_factory.mktemp("federation-config"))
    domains: dict[str, Domain] = {}
    routers: list[Router] = []
    try:
        for index, name in enumerate(DOMAINS):
            state = ServerState.open(tmp_path_factory.mktemp(f"fedavg-{name}"))
            state.gateway.add_dataset(clinic_metadata(), clinic_frames(
                1500, seed=20 + index, first_id=1 + 10_000 * index))
            state.users.create_user("owner", "owner")
            state.users.grant("owner", "clinic", "own")
            token = state.users.issue_token("owner")
            state.users.create_user("lena", "analyst")           # a local analyst
            state.users.grant("lena", "clinic", "query")
            # As `sqlgate serve --federation`: plugins (torch_bridge's local training runner)
            # first, then the federation routes, whose training runner wraps it.
            routes = [*training_routes(install(state)),
                      *federated_domain_routes(state, paths[name])]
            app = create_app(state, extra_routes=routes)
            server = BackgroundServer(app, port=ports[name]).start()
            domains[name] = Domain(name, state, server, token)
        environment = Env(files, domains, routers)
        yield environment
    finally:
        for router in routers:
            router.close()
        for domain in domains.values():
            domain.server.stop()
            domain.state.close()


@pytest.fixture()
def true_updates(monkeypatch):
    """What each domain's update really was (recorded inside the domains, never sent)."""
    from torch_bridge.fedavg import LocalTrainer

    recorded: dict[tuple[str, str], list[list[int]]] = {}
    original = LocalTrainer.train_round

    def recording(self, global_state, update_clip, cancel=None):
        encoded = original(self, global_state, update_clip, cancel)
        recorded.setdefault((self.job_id, self.party.name), []).append(list(encoded))
        return encoded

    monkeypatch.setattr(LocalTrainer, "train_round", recording)
    return recorded


def holdout():
    frame = clinic_frames(2000, seed=99)["patients"]
    y = frame["at_risk"].to_numpy().astype(int)
    return design_matrix(frame), y, max(y.mean(), 1 - y.mean())


def test_job_runs_only_after_every_owner_approved_and_the_router_sees_only_masked_updates(
        env, true_updates):
    from server.secure_sum import RING, encode_signed, from_wire
    from tests.torch_bridge.conftest import accuracy
    from torch_bridge.spec import parse_training_spec
    from torch_bridge.weights import from_safetensors

    seen: list[tuple[str, str, dict]] = []
    router = env.router(observer=lambda phase, domain, body: seen.append((phase, domain, body)))
    job = router.federated_train(SPEC, analyst="alice", rounds=3, purpose="readmission risk")
    # Every domain filed a pending training request for its owner, nothing charged.
    assert sorted(job.requests) == list(DOMAINS)
    for name, domain in env.domains.items():
        request = domain.request(job.requests[name])
        assert (request.kind, request.status, request.requester) == ("training", "pending",
                                                                     "alice")
        assert request.sql == SPEC["sql"] and job.job_id in request.purpose
        assert request.spec["federated"]["fingerprint"] == job.fingerprint
    assert job.approvals() == {d: "pending" for d in DOMAINS}

    with pytest.raises(ApprovalRequired):
        job.run()
    env.domains["a"].approve(job.requests["a"])
    env.domains["b"].approve(job.requests["b"])
    with pytest.raises(ApprovalRequired) as refused:
        job.run()
    assert refused.value.details["approvals"] == {"c": "pending"}
    for domain in env.domains.values():
        assert domain.spent("alice").queries == 0          # nothing charged anywhere
    env.domains["c"].approve(job.requests["c"])
    assert job.approvals() == {d: "approved" for d in DOMAINS}

    rounds = []
    summary = job.run(on_round=rounds.append)
    assert [r["round"] for r in rounds] == [1, 2, 3] and summary["rounds"] == 3

    # Each domain charged its own ledger exactly once, the full target.
    for name, domain in env.domains.items():
        status = domain.spent("alice")
        assert status.queries == 1 and status.spent_epsilon == pytest.approx(3.0)
        assert all(0 < r["epsilon_spent"][name] <= 3.0 for r in rounds)
        done = domain.request(job.requests[name])
        assert done.status == "done" and done.summary["federated"] is True
        # The owner sees the job in the domain's audit log: filed, charged, rounds, ended.
        records = [r for r in domain.state.audit.records(dataset="clinic")
                   if (r.get("details") or {}).get("job_id") == job.job_id]
        actions = [r["action"] for r in records if r["decision"] == "ok"]
        assert actions.count("fedavg.start") == 1 and actions.count("fedavg.round") == 3
        assert {"fedavg.prepare", "fedavg.ready", "fedavg.end"} <= set(actions)
        started = next(r for r in records if r["action"] == "fedavg.start")
        assert started["epsilon"] == pytest.approx(3.0) and started["actor"] == "router"
        assert domain.state.audit.verify().ok

    # The router never received an update in the clear: every share differs from the true
    # update everywhere, partial sums do not unmask, only the total of all shares does.
    shares = {}
    for phase, domain, body in seen:
        if phase == "fedavg.round":
            shares[(body["round"], domain)] = from_wire(body["share"], body["length"])
            assert set(body) == {"domain", "job_id", "round", "length", "share",
                                 "epsilon_spent"}
    assert len(shares) == 3 * len(DOMAINS)
    for r in (1, 2, 3):
        updates = {d: encode_signed(true_updates[(job.job_id, d)][r - 1]) for d in DOMAINS}
        assert any(np.any(u != 0) for u in updates.values())
        with np.errstate(over="ignore"):
            for d in DOMAINS:
                assert np.all(shares[(r, d)] != updates[d])
            pair_shares = shares[(r, "a")] + shares[(r, "b")]
            pair_updates = updates["a"] + updates["b"]
            assert np.all(pair_shares != pair_updates)
            total = pair_shares + shares[(r, "c")]
            assert np.array_equal(total, pair_updates + updates["c"])
        assert int(total.max()) < RING

    # The federated model beats chance; the weights are released once.
    weights = job.take_weights()
    tensors, info = from_safetensors(weights)
    assert info["federated"] is True and info["rounds"] == 3
    assert sorted(info["privacy"]) == list(DOMAINS)
    x, y, majority = holdout()
    acc = accuracy(tensors, parse_training_spec(SPEC), x, y)
    assert acc > majority + 0.10, (acc, majority)
    with pytest.raises(ResultGone):
        job.take_weights()
    with pytest.raises(Conflict):
        job.run()


def test_domains_refuse_replays_strangers_and_reused_approvals(env):
    router = env.router()
    job = router.federated_train(SPEC, analyst="carol", rounds=2, purpose="replay checks")
    env.approve_all(job)
    url = env.domains["b"].server.url + "/federation/v1/fedavg"
    token = env.files.router["domains"]["b"]["token"]
    auth = {"Authorization": f"Bearer {token}"}
    answers = []

    def replay_round(record):
        # Mid-job, with the router's own credentials: a round is served once, in order
        # (serving it twice would reuse its masks and reveal the difference of two updates).
        if record["round"] == 1:
            for number in (1, 3):
                answers.append(httpx.post(f"{url}/round", headers=auth, timeout=30, json={
                    "job_id": job.job_id, "round": number, "weights": ""}))

    job.run(on_round=replay_round)
    assert [a.status_code for a in answers] == [409, 409]
    assert all(a.json()["error"]["details"]["expected_round"] == 2 for a in answers)
    job.take_weights()
    ref = job._ref("b")
    with httpx.Client(timeout=30) as client:
        # No or a wrong token: refused like every federation route.
        assert client.post(f"{url}/status", json=ref).status_code == 401
        assert client.post(f"{url}/status", json=ref,
                           headers={"Authorization": "Bearer nope"}).status_code == 401
        # The approval was consumed: it cannot start a second job.
        again = client.post(f"{url}/start", json=dict(ref, nonce="1700000000." + "0" * 32),
                            headers=auth)
        assert again.status_code == 409 and again.json()["error"]["details"]["approval"] == "done"
        # A finished job serves no more rounds (a replayed round would reuse its masks).
        replay = client.post(f"{url}/round", json={"job_id": job.job_id, "round": 1,
                                                   "weights": ""}, headers=auth)
        assert replay.status_code == 404
        # A request id with another job's fingerprint looks missing.
        wrong = client.post(f"{url}/status", json=dict(ref, fingerprint="0" * 64), headers=auth)
        assert wrong.status_code == 404
    assert env.domains["b"].spent("carol").queries == 1


def test_refusals_before_any_charge(env):
    router = env.router()
    # A spec no domain could run is refused at the router, before any domain is called.
    with pytest.raises(InvalidParameter):
        router.federated_train(training_spec(sql="SELECT income, at_risk FROM clinic.patients"),
                               analyst="dave", rounds=2, purpose="x")
    with pytest.raises(InvalidParameter):
        router.federated_train(SPEC, analyst="dave", rounds=0, purpose="x")
    assert all(not d.state.requests.list(requester="dave") for d in env.domains.values())

    # One owner denies: the job cannot run, nothing is charged; withdrawing it ends the rest.
    job = router.federated_train(SPEC, analyst="dave", rounds=2, purpose="denied study")
    env.domains["a"].approve(job.requests["a"])
    env.domains["b"].approve(job.requests["b"])
    env.domains["c"].deny(job.requests["c"])
    with pytest.raises(ApprovalRequired) as refused:
        job.run()
    assert refused.value.details["approvals"] == {"c": "denied"}
    job.withdraw()
    assert [env.domains[d].request(job.requests[d]).status for d in DOMAINS] == \
        ["failed", "failed", "denied"]

    # Over budget at one domain: refused at prepare; requests filed elsewhere are withdrawn.
    from accountant import Budget
    env.domains["b"].gateway.set_budget("erin", "clinic", Budget(1.0, 1e-4), set_by="owner")
    with pytest.raises(BudgetExhausted):
        router.federated_train(SPEC, analyst="erin", rounds=2, purpose="too expensive")
    for name in ("a", "c"):
        assert [r.status for r in env.domains[name].state.requests.list(requester="erin")] \
            == ["denied"]
    assert not env.domains["b"].state.requests.list(requester="erin")
    for domain in env.domains.values():
        assert domain.spent("dave").queries == 0 and domain.spent("erin").queries == 0


def test_local_training_still_runs_and_federated_approvals_never_run_locally(env, tmp_path):
    # On a federated domain, a local training request goes to torch_bridge's runner.
    domain = env.domains["a"]
    token = domain.state.users.issue_token("lena")
    filed = httpx.post(f"{domain.server.url}/v1/requests", timeout=30,
                       headers={"Authorization": f"Bearer {token}"},
                       json={"dataset": "clinic", "kind": "training", "sql": SPEC["sql"],
                             "purpose": "local model", "spec": training_spec(epochs=1)})
    assert filed.status_code == 200, filed.text
    request_id = filed.json()["id"]
    domain.approve(request_id)
    for _ in range(1200):                  # a bounded wait for the worker thread
        if domain.request(request_id).status not in ("approved", "running"):
            break
        time.sleep(0.05)
    assert domain.request(request_id).status == "done"
    assert domain.spent("lena").queries == 1
    # An analyst cannot file a request that looks federated (the spec field is refused).
    forged = httpx.post(f"{domain.server.url}/v1/requests", timeout=30,
                        headers={"Authorization": f"Bearer {token}"},
                        json={"dataset": "clinic", "kind": "training", "sql": SPEC["sql"],
                              "purpose": "x", "spec": dict(SPEC, federated={"job_id": "0"})})
    assert forged.status_code == 400

    # A domain WITHOUT the federation runner: an approved federated request fails at once
    # (torch_bridge refuses its spec) and charges nothing.
    from server.http.approvals import approve
    from server.router.fedavg_protocol import JobTerms
    from server.router.protocol import Federation, schema_fingerprint
    from torch_bridge.server_plugin import install
    from torch_bridge.spec import parse_training_spec

    with ServerState.open(tmp_path / "plain") as state:
        meta = state.gateway.add_dataset(clinic_metadata(), clinic_frames(200, seed=5))
        install(state)
        spec = parse_training_spec(SPEC)
        terms = JobTerms("ab" * 16, "clinic", schema_fingerprint(meta), "zoe", spec.to_dict(), 2,
                         10.0, Federation.of(DOMAINS, "a"))
        request = state.requests.create(requester="zoe", dataset="clinic", kind="training",
                                        sql=spec.sql, purpose="federated",
                                        spec=terms.request_spec())
        assert approve(state, request.id, "owner", "ok").status == "failed"
        assert state.gateway.budget("zoe", "clinic").queries == 0


def test_analyst_http_api_at_the_router(env, tmp_path):
    from server.router.frontend import open_router_state
    from server.router.training_api import federated_training_routes
    from torch_bridge.weights import from_safetensors

    state = open_router_state(tmp_path / "router-home", env.router())
    state.users.create_user("gina", "analyst")
    state.users.create_user("hal", "analyst")
    state.users.grant("gina", "clinic", "query")
    gina = {"Authorization": f"Bearer {state.users.issue_token('gina')}"}
    hal = {"Authorization": f"Bearer {state.users.issue_token('hal')}"}
    body = {"spec": SPEC, "rounds": 2, "purpose": "http study"}
    try:
        with BackgroundServer(create_app(state, extra_routes=federated_training_routes())) \
                as server, httpx.Client(base_url=server.url, timeout=60) as client:
            assert client.post(API, json=body).status_code == 401
            assert client.post(API, json=body, headers=hal).status_code == 404  # no grant
            created = client.post(API, json=body, headers=gina)
            assert created.status_code == 200, created.text
            job = created.json()
            assert job["status"] == "awaiting_approval" and sorted(job["requests"]) == list(DOMAINS)
            shown = client.get(f"{API}/{job['job_id']}", headers=gina).json()
            assert shown["approvals"] == {d: "pending" for d in DOMAINS}
            assert client.get(f"{API}/{job['job_id']}", headers=hal).status_code == 404
            refused = client.post(f"{API}/{job['job_id']}/run", json={}, headers=gina)
            assert refused.status_code == 409
            assert refused.json()["error"]["code"] == "approval_required"
            assert all(d.spent("gina").queries == 0 for d in env.domains.values())
            for name, domain in env.domains.items():
                domain.approve(job["requests"][name])
            started = client.post(f"{API}/{job['job_id']}/run", json={}, headers=gina)
            assert started.status_code == 200, started.text
            for _ in range(1200):              # a bounded wait for the background rounds
                status = client.get(f"{API}/{job['job_id']}", headers=gina).json()["status"]
                if status != "running":
                    break
                time.sleep(0.05)
            assert status == "done"
            weights = client.get(f"{API}/{job['job_id']}/weights", headers=gina)
            assert weights.status_code == 200
            assert weights.headers["content-type"] == "application/x-safetensors"
            assert from_safetensors(weights.content)[1]["rounds"] == 2
            assert client.get(f"{API}/{job['job_id']}/weights", headers=gina).status_code == 410
            # A job nobody approved yet can be withdrawn: the owners' requests are closed.
            other = client.post(API, json=body, headers=gina).json()
            assert client.post(f"{API}/{other['job_id']}/cancel", json={},
                               headers=hal).status_code == 404
            withdrawn = client.post(f"{API}/{other['job_id']}/cancel", json={}, headers=gina)
            assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "failed"
            assert all(env.domains[d].request(other["requests"][d]).status == "denied"
                       for d in DOMAINS)
            listed = client.get(API, headers=gina).json()["jobs"]
            assert sorted(j["job_id"] for j in listed) == sorted([job["job_id"],
                                                                  other["job_id"]])
            assert client.get(API, headers=hal).json()["jobs"] == []
        assert all(d.spent("gina").queries == 1 for d in env.domains.values())
        actions = {r["action"] for r in state.audit.records(actor="gina")}
        assert {"federated_training.create", "federated_training.run",
                "federated_training.weights"} <= actions
    finally:
        state.uploads.close()


def test_a_domain_down_mid_job_fails_it_cleanly(env):
    """Runs last: it stops domain c's server."""
    router = env.router()
    job = router.federated_train(SPEC, analyst="frank", rounds=3, purpose="outage")
    env.approve_all(job)

    def outage(record):
        if record["round"] == 1:
            env.domains["c"].server.stop()

    with pytest.raises(FederationFailed) as failed:
        job.run(on_round=outage)
    assert failed.value.details["failed_domains"] == ["c"]
    assert failed.value.details["charged_domains"] == list(DOMAINS)
    assert failed.value.details["round"] == 2
    assert job.status == "failed" and job.to_dict()["result_available"] is False
    with pytest.raises(Conflict):
        job.take_weights()
    # Every domain was charged exactly once and stays charged; nothing was released.
    for name, domain in env.domains.items():
        assert domain.spent("frank").queries == 1
    for name in ("a", "b"):
        request = env.domains[name].request(job.requests[name])
        assert request.status == "failed" and request.error_code == "federation_failed"

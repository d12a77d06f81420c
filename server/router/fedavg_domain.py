"""A domain's side of federated training (FedAvg of local DP-SGD), behind /federation/v1/fedavg.

Trust model: the same as federated queries (server/router/domain.py). Only an authenticated
peer (the router) calls; the federation settings (parties, pair keys) come from this
domain's own configuration; the job fingerprint is recomputed from this domain's own
metadata; and nothing runs without this domain's OWNER approving the job:

1. `prepare` (router): validate the spec against this domain's metadata, pre-check the
   analyst's budget (nothing written), and file a `pending` training request in this
   domain's RequestStore (requester = the analyst, spec = the training spec + a `federated`
   block naming the job). Idempotent per job.
2. The owner reviews it like any request (`GET /v1/requests`, `mock-run`) and approves it with
   `POST /v1/requests/{id}/approve`. The `training` runner installed by `install_fedavg`
   recognises federated requests and parks them in `running` with progress
   `{"federated": true, "phase": "awaiting_router"}`: approved, not used yet.
3. `ready` (router, all domains first): the request is approved and unused, its stored spec
   still has this job's fingerprint, the budget fits. Nothing written.
4. `start`: consume the approval (progress phase `charged`, durable: one approval starts one
   job, also across restarts), claim the nonce, charge this domain's ledger ONCE for the
   whole job, then read the partition and calibrate sigma for all rounds.
5. `round` r (exactly once each, in order): load the global weights the router sent, run the
   local DP-SGD epochs, clip + fixed-point encode the update, mask it with the pairwise
   masks of (pair keys, job, nonce, r). The router only ever sees the masked share.
6. `end`: the router reports the job's outcome; the request becomes `done` (a small JSON
   summary, no weights) or `failed`; a request still pending is withdrawn (denied).

Charges are never refunded (privacy rule 4). Errors carry public facts only; anything
unexpected while training on data is withheld.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping

from server import secure_sum
from server.router.domain import DomainService
from server.router.errors import FederationMismatch
from server.router.fedavg_protocol import (FEDERATED_KEY, JobTerms, check_fingerprint,
                                           check_job_id, check_rounds, check_update_clip,
                                           decode_weights, mask_context)
from server.router.protocol import Federation, schema_fingerprint
from sqlgate.errors import (BudgetExhausted, Conflict, ExecutionFailed, InvalidParameter,
                            NotFound, PermissionDenied, SqlgateError)

KIND = "training"
AWAITING = "awaiting_router"
WITHHELD = ("the federated training job failed while running on this domain's private data; "
            "details are withheld because they may depend on private values; the charge is "
            "not refunded")
RESULT_CONTENT_TYPE = "application/json"
MAX_PURPOSE_CHARS = 2_000


def is_federated(request) -> bool:
    return request.kind == KIND and isinstance(request.spec, Mapping) \
        and isinstance(request.spec.get(FEDERATED_KEY), Mapping)


@dataclass
class _Job:
    """A started job on this domain (in memory: a restart ends it, see install_fedavg)."""

    terms: JobTerms
    request_id: str
    nonce: str
    trainer: Any                 # torch_bridge.fedavg.LocalTrainer
    template: dict               # parameter name -> tensor (shapes and dtypes)
    numel: int
    last_round: int = 0
    failed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class FedAvgDomain:
    def __init__(self, service: DomainService, state):
        self.service = service
        self.state = state
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.service.name

    @property
    def federation(self) -> Federation:
        return self.service.config.federation

    @property
    def gateway(self):
        return self.state.gateway

    # ------------------------------------------------------------ protocol

    def prepare(self, body: Mapping[str, Any], peer: str) -> dict:
        _require_torch(self.name)      # no owner should review a job this domain cannot run
        terms, _ = self._terms_from_body(body)
        purpose = body.get("purpose")
        if not isinstance(purpose, str) or not purpose.strip():
            raise InvalidParameter("'purpose' is required: why the analyst trains this model")
        if len(purpose) > MAX_PURPOSE_CHARS:
            raise InvalidParameter(f"'purpose' must be at most {MAX_PURPOSE_CHARS} characters")
        self._check_budget(terms)
        with self._lock:
            request = self._existing_request(terms)
            if request is None:
                text = (f"[federated training job {terms.job_id} via '{peer}': "
                        f"{len(terms.federation.parties)} domains "
                        f"({', '.join(terms.federation.parties)}), {terms.rounds} rounds; this "
                        f"domain trains on its own partition and charges its own ledger "
                        f"once] {purpose.strip()}")
                request = self.state.requests.create(
                    requester=terms.analyst, dataset=terms.dataset, kind=KIND,
                    sql=terms.spec["sql"], purpose=text, spec=terms.request_spec())
        return {"domain": self.name, "fingerprint": terms.fingerprint, "request_id": request.id,
                "approval": approval_of(request)}

    def status(self, body: Mapping[str, Any]) -> dict:
        request = self._request_for(body)
        out = {"domain": self.name, "request_id": request.id, "approval": approval_of(request)}
        if request.status == "denied":
            out["reason"] = request.reason
        return out

    def ready(self, body: Mapping[str, Any]) -> dict:
        request = self._request_for(body)
        terms = self._approved_terms(request)
        self._check_budget(terms)
        return {"domain": self.name, "request_id": request.id, "ready": True}

    def start(self, body: Mapping[str, Any]) -> dict:
        request = self._request_for(body)
        nonce = body.get("nonce")
        if not isinstance(nonce, str):
            raise InvalidParameter("'nonce' is required")
        _require_torch(self.name)
        from torch_bridge.fedavg import LocalTrainer, Party, flatten   # torch: lazily
        from torch_bridge.spec import parse_training_spec

        with self._lock:
            request = self.state.requests.get(request.id)
            terms = self._approved_terms(request)
            self._check_budget(terms)
            # Model and selection are built before the approval is consumed: a spec this
            # domain cannot run leaves the approval (and the ledger) untouched.
            spec = parse_training_spec(dict(terms.spec))
            party = Party(self.name, self.gateway, terms.dataset, terms.analyst)
            trainer = LocalTrainer(party, spec, terms.rounds, terms.job_id)
            template = trainer.initial_state()
            self.service.nonces.claim(nonce)
            # One approval starts one job: consumed durably before the charge.
            self.state.requests.set_progress(request.id, _progress("charging", terms))
            job = _Job(terms, request.id, nonce, trainer, template,
                       int(flatten(template).size))
            self._jobs[terms.job_id] = job
        try:
            trainer.charge()
        except SqlgateError as err:
            self._drop(job, err.code, f"the job could not be charged: {err.message}")
            raise
        except Exception:
            self._drop(job, "execution_failed", "the job could not be charged (ledger failure)")
            raise ExecutionFailed("the federated training job could not be charged at domain "
                                  f"'{self.name}' (ledger failure)") from None
        try:
            plan = trainer.load()
        except SqlgateError as err:
            self._drop(job, err.code, err.message + "; the charge is not refunded")
            raise
        except Exception:
            self._drop(job, "execution_failed", WITHHELD)
            raise ExecutionFailed(WITHHELD) from None
        self.state.requests.set_progress(request.id, _progress("charged", terms))
        return {"domain": self.name, "job_id": terms.job_id, "parameters": job.numel,
                "charged": {"epsilon": spec.epsilon, "delta": spec.delta},
                "plan": plan.to_dict()}

    def round(self, body: Mapping[str, Any]) -> dict:
        job = self._job(body)
        number = body.get("round")
        if isinstance(number, bool) or not isinstance(number, int):
            raise InvalidParameter("'round' must be an integer")
        from torch_bridge.fedavg import unflatten   # torch: lazily

        with job.lock:
            if job.failed:
                raise Conflict(f"federated job '{job.terms.job_id}' failed on domain "
                               f"'{self.name}'; it cannot continue")
            if number != job.last_round + 1 or number > job.terms.rounds:
                # Serving a round twice would reuse its masks and reveal update differences.
                raise Conflict(f"domain '{self.name}' expects round {job.last_round + 1} of "
                               f"{job.terms.rounds} for this job, not {number}",
                               details={"expected_round": job.last_round + 1})
            weights = decode_weights(body.get("weights"), job.numel)
            job.last_round = number
            try:
                global_state = unflatten(weights.astype("float64"), job.template)
                encoded = job.trainer.train_round(global_state, job.terms.update_clip)
                context = mask_context(job.terms.fingerprint, job.terms.job_id, job.nonce,
                                       number, job.terms.federation.parties)
                share = job.trainer.share(encoded, list(job.terms.federation.parties),
                                          self.service.config.pair_keys, context)
            except SqlgateError as err:
                job.failed = True
                self._fail_request(job, err.code, err.message + "; the charge is not refunded")
                raise
            except Exception:
                job.failed = True
                self._fail_request(job, "execution_failed", WITHHELD)
                raise ExecutionFailed(WITHHELD) from None
            epsilon = job.trainer.epsilon_spent()
        self._progress(job, {"round": number, "rounds": job.terms.rounds,
                             "epsilon_spent": epsilon})
        return {"domain": self.name, "job_id": job.terms.job_id, "round": number,
                "length": job.numel, "share": secure_sum.to_wire(share),
                "epsilon_spent": epsilon}

    def end(self, body: Mapping[str, Any], peer: str) -> dict:
        request = self._request_for(body)
        outcome = body.get("outcome")
        if outcome not in ("completed", "failed"):
            raise InvalidParameter("'outcome' must be 'completed' or 'failed'")
        job_id = request.spec[FEDERATED_KEY]["job_id"]
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is not None:
            job.trainer.close()
        store = self.state.requests
        if request.status == "pending":
            store.deny(request.id, f"federation:{peer}",
                       "withdrawn by the router: the federated job did not start")
        elif request.status == "running":
            phase = (request.progress or {}).get("phase")
            if phase == AWAITING:
                store.fail(request.id, "federation_failed", "the federated job was abandoned "
                           "before it started on this domain; nothing was charged")
            elif outcome == "completed" and job is not None and not job.failed \
                    and job.last_round == job.terms.rounds:
                summary = {"federated": True, "job_id": job_id, "rounds": job.terms.rounds,
                           "parties": list(job.terms.federation.parties),
                           "epsilon": job.trainer.epsilon_spent(),
                           "epsilon_charged": float(job.terms.spec["epsilon"]),
                           "delta": float(job.terms.spec["delta"]),
                           "weights": "released by the router to the analyst"}
                store.finish(request.id, json.dumps(summary).encode(), RESULT_CONTENT_TYPE,
                             summary)
            else:
                store.fail(request.id, "federation_failed",
                           "the federated job failed (at another domain or the router); no "
                           "weights were released; this domain's charge is not refunded")
        return {"domain": self.name, "request_id": request.id,
                "status": store.get(request.id).status}

    # ------------------------------------------------------------ audit

    def audit(self, action: str, peer: str, body: Mapping[str, Any], result: dict | None,
              error: BaseException | None) -> None:
        """One record per router call in this domain's audit log (public facts only), so
        owners see federated jobs on their datasets: filed, started (charged), each round,
        ended."""
        audit = getattr(self.state, "audit", None)
        if audit is None:
            return
        from server.audit import AuditEvent, decision_for

        body = body if isinstance(body, Mapping) else {}
        details = {k: (v[:64] if isinstance(v, str) else v)
                   for k in ("job_id", "request_id", "round", "outcome")
                   if isinstance(v := body.get(k), (str, int)) and not isinstance(v, bool)}
        dataset, analyst = (v[:200] if v else v for v in self._audit_subject(body, result))
        if analyst:
            details["analyst"] = analyst
        epsilon = delta = None
        if error is None and action == "start" and result:
            epsilon, delta = result["charged"]["epsilon"], result["charged"]["delta"]
        decision, code = decision_for(error)
        audit.append(AuditEvent(channel="federation", action=f"fedavg.{action}",
                                decision=decision, actor=peer, role="router", dataset=dataset,
                                epsilon=epsilon, delta=delta, code=code, details=details))

    def _audit_subject(self, body: Mapping[str, Any], result: dict | None):
        job_id = body.get("job_id")
        with self._lock:
            job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if job is not None:
            return job.terms.dataset, job.terms.analyst
        request_id = (result or {}).get("request_id") or body.get("request_id")
        if isinstance(request_id, str):
            try:
                request = self.state.requests.get(request_id)
                return request.dataset, request.requester
            except SqlgateError:
                pass
        dataset, analyst = body.get("dataset"), body.get("analyst")
        return (dataset if isinstance(dataset, str) else None,
                analyst if isinstance(analyst, str) else None)

    # ------------------------------------------------------------ checks

    def _terms_from_body(self, body: Mapping[str, Any]) -> tuple[JobTerms, Any]:
        from torch_bridge.data import plan_training_query        # torch-free
        from torch_bridge.spec import parse_training_spec

        if not isinstance(body, Mapping):
            raise InvalidParameter("the request body must be a JSON object")
        job_id = check_job_id(body.get("job_id"))
        analyst = body.get("analyst")
        if not isinstance(analyst, str) or not analyst or len(analyst) > 200:
            raise InvalidParameter("'analyst' must be a non-empty string")
        self._check_federation(body)
        meta = self._federated_dataset(body.get("dataset"))
        spec = parse_training_spec(body.get("spec"))
        query = plan_training_query(meta, spec)      # against THIS domain's metadata
        terms = JobTerms(job_id, meta.name, schema_fingerprint(meta), analyst, spec.to_dict(),
                         check_rounds(body.get("rounds")),
                         check_update_clip(body.get("update_clip")), self.federation)
        if check_fingerprint(body.get("fingerprint")) != terms.fingerprint:
            raise FederationMismatch(
                f"domain '{self.name}' computed a different fingerprint for this training job "
                "(its metadata, settings or software version differ); nothing was filed")
        return terms, query

    def _terms_from_request(self, request) -> JobTerms:
        """The terms the owner approved, rebuilt from the stored request and this domain's
        own metadata and configuration."""
        from torch_bridge.spec import parse_training_spec

        raw = dict(request.spec)
        block = raw.pop(FEDERATED_KEY)
        spec = parse_training_spec(raw, sql=request.sql)
        meta = self.gateway.dataset(request.dataset)
        return JobTerms(check_job_id(block.get("job_id")), meta.name, schema_fingerprint(meta),
                        request.requester, spec.to_dict(), check_rounds(block.get("rounds")),
                        check_update_clip(block.get("update_clip")), self.federation)

    def _request_for(self, body: Mapping[str, Any]):
        """The federated request a router call names; others' requests look missing."""
        if not isinstance(body, Mapping):
            raise InvalidParameter("the request body must be a JSON object")
        self._check_federation(body)
        request_id = body.get("request_id")
        fingerprint = check_fingerprint(body.get("fingerprint"))
        if not isinstance(request_id, str) or not request_id:
            raise InvalidParameter("'request_id' is required")
        try:
            request = self.state.requests.get(request_id)
        except NotFound:
            request = None
        if request is None or not is_federated(request) \
                or request.spec[FEDERATED_KEY].get("fingerprint") != fingerprint:
            raise NotFound(f"domain '{self.name}' has no federated training request "
                           f"'{request_id[:64]}' for this job")
        return request

    def _approved_terms(self, request) -> JobTerms:
        approval = approval_of(request)
        if approval != "approved":
            raise Conflict(f"domain '{self.name}': the owner's approval of this federated "
                           f"training job is {approval}; nothing was charged",
                           details={"approval": approval, "request_id": request.id})
        terms = self._terms_from_request(request)
        if terms.fingerprint != request.spec[FEDERATED_KEY].get("fingerprint"):
            raise FederationMismatch(
                f"domain '{self.name}': the approved request no longer matches this job (its "
                "metadata or settings changed since); nothing was charged")
        return terms

    def _check_federation(self, body: Mapping[str, Any]) -> None:
        if Federation.from_dict(body.get("federation") or {}) != self.federation:
            raise FederationMismatch(
                f"domain '{self.name}' is configured for a different federation (parties, "
                "noise domain or unit overlap differ)")

    def _federated_dataset(self, dataset: Any):
        if not isinstance(dataset, str) or not dataset:
            raise InvalidParameter("'dataset' must be a non-empty string")
        meta = self.gateway.dataset(dataset)
        if meta.name.lower() not in self.service.config.datasets:
            raise PermissionDenied(f"domain '{self.name}' does not federate dataset '{dataset}'")
        return meta

    def _check_budget(self, terms: JobTerms) -> None:
        from torch_bridge.accounting import job_cost               # torch-free
        try:
            self.gateway.accountant.check(terms.analyst, terms.dataset,
                                          job_cost(terms.spec["epsilon"], terms.spec["delta"]))
        except BudgetExhausted as err:
            err.message = f"domain '{self.name}': {err.message}"
            raise

    def _existing_request(self, terms: JobTerms):
        for request in self.state.requests.list(requester=terms.analyst, kind=KIND, limit=1000):
            if is_federated(request) and \
                    request.spec[FEDERATED_KEY].get("fingerprint") == terms.fingerprint:
                if request.status in ("pending", "running"):
                    return request
                raise Conflict(f"domain '{self.name}': this federated job's request is "
                               f"{request.status}; prepare a new job",
                               details={"request_id": request.id, "status": request.status})
        return None

    # ------------------------------------------------------------ job state

    def _job(self, body: Mapping[str, Any]) -> _Job:
        if not isinstance(body, Mapping):
            raise InvalidParameter("the request body must be a JSON object")
        job_id = check_job_id(body.get("job_id"))
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"domain '{self.name}' runs no federated training job '{job_id}'")
        return job

    def _progress(self, job: _Job, facts: dict) -> None:
        try:
            self.state.requests.set_progress(job.request_id,
                                             {**_progress("training", job.terms), **facts})
        except Conflict:
            pass  # the request already ended (e.g. the router reported a failure)

    def _fail_request(self, job: _Job, code: str, message: str) -> None:
        try:
            self.state.requests.fail(job.request_id, code, message)
        except Conflict:
            pass

    def _drop(self, job: _Job, code: str, message: str) -> None:
        job.failed = True
        with self._lock:
            self._jobs.pop(job.terms.job_id, None)
        self._fail_request(job, code, message)


def _require_torch(domain: str) -> None:
    """Whether the training stack is installed, without importing it."""
    import importlib.util

    if any(importlib.util.find_spec(m) is None for m in ("torch", "opacus", "safetensors")):
        from server.http.approvals import RunnerUnavailable
        raise RunnerUnavailable(f"domain '{domain}' cannot run training jobs: the torch stack "
                                "(pip install 'sqlgate[torch]') is not installed there")


def _progress(phase: str, terms: JobTerms) -> dict:
    return {"federated": True, "phase": phase, "job_id": terms.job_id,
            "parties": list(terms.federation.parties)}


def approval_of(request) -> str:
    """pending | approved (unused) | in_use | denied | done | failed | fetched."""
    if request.status == "running":
        return "approved" if (request.progress or {}).get("phase") == AWAITING else "in_use"
    return request.status


ORPHANED = ("the domain restarted during this federated training job; the job cannot "
            "continue; its charge (if made) is not refunded")


def install_fedavg(state, service: DomainService) -> FedAvgDomain:
    """Register the `training` runner that parks approved federated requests for the router
    (local training requests go to the runner installed before, e.g. torch_bridge's). Call
    it AFTER torch_bridge.server_plugin.install. Federated jobs that were started by a
    previous process cannot continue (their state was in memory): they are marked failed."""
    fedavg = FedAvgDomain(service, state)
    local = state.executors.get(KIND)

    def execute(st, request) -> None:
        if is_federated(request):
            st.requests.set_progress(request.id, {
                "federated": True, "phase": AWAITING,
                "job_id": request.spec[FEDERATED_KEY].get("job_id"),
                "parties": request.spec[FEDERATED_KEY].get("parties")})
        elif local is not None:
            local(st, request)
        else:
            st.requests.fail(request.id, "runner_unavailable",
                             "this server runs no local training jobs (torch_bridge is not "
                             "installed); only federated training requests can run here")

    for request in state.requests.list(kind=KIND, status="running", limit=1000):
        if is_federated(request) and approval_of(request) != "approved":
            try:
                state.requests.fail(request.id, "federation_failed", ORPHANED)
            except Conflict:
                pass
    state.executors[KIND] = execute
    return fedavg

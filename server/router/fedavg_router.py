"""The router's side of federated training: FedAvg of local DP-SGD, with secure aggregation.

    job = router.federated_train(spec, analyst="alice", rounds=5, purpose="risk model")
    job.requests          # {domain: request id} filed at every domain, pending
    ... each domain's owner approves its request (POST /v1/requests/{id}/approve) ...
    job.approvals()       # {domain: "pending" | "approved" | "denied" | ...}
    job.run()             # ready all -> start all -> rounds -> end all; raises on failure
    job.take_weights()    # safetensors bytes, exactly once

Order and guarantees:
* prepare: the spec is validated here against the domains' shared public metadata, then every
  domain validates it against its own, pre-checks the analyst's budget and files a pending
  request for its owner. Nothing is charged. If one domain refuses, the others' requests are
  withdrawn.
* ready: every domain confirms its owner approved this exact job (fingerprint) and the budget
  fits. If any has not, nothing is charged anywhere and the job can be run again later.
* start: each domain consumes its approval and charges its own ledger once for the whole job.
* rounds: the router broadcasts the global weights, each domain returns its update masked with
  pairwise masks; the router only learns the SUM of the updates (SecureSum), and moves the
  global model by their mean. It never holds a pair key or a single domain's update.
* A domain failing mid-way fails the job: no weights are released, every domain is told
  (`end`), charged domains stay charged (no refunds, privacy rule 4).

The released weights are post-processing of every domain's DP-SGD run on its own partition:
each domain's units get that domain's (epsilon, delta) guarantee (disjoint partitions).
"""
from __future__ import annotations

import secrets
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from server import secure_sum
from server.requests import ResultGone
from server.router.errors import FederationFailed, FederationMismatch
from server.router.fedavg_protocol import (JobTerms, check_rounds, check_update_clip,
                                           encode_weights)
from server.router.protocol import schema_fingerprint
from sqlgate.errors import Conflict, InvalidParameter, PolicyRefused, SqlgateError

PREFIX = "/fedavg"


class ApprovalRequired(Conflict):
    """Some domain's owner has not approved the job (yet): nothing was charged anywhere."""

    code = "approval_required"


@dataclass
class FederatedTrainingJob:
    router: Any                                   # server.router.Router
    terms: JobTerms
    spec: Any                                     # torch_bridge.spec.TrainingSpec
    meta: Any                                     # the shared public DatasetMeta
    requests: dict[str, str]                      # domain -> approval request id
    status: str = "awaiting_approval"             # -> running -> done | failed
    history: list[dict] = field(default_factory=list)
    charged: tuple[str, ...] = ()
    error: SqlgateError | None = None
    _weights: bytes | None = None
    _fetched: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _cancel: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)

    @property
    def job_id(self) -> str:
        return self.terms.job_id

    @property
    def fingerprint(self) -> str:
        return self.terms.fingerprint

    def approvals(self) -> dict[str, str]:
        answers = _call_all(self.router, "fedavg.status", lambda d: ("/status", self._ref(d)))
        return {domain: str(body.get("approval")) for domain, body in answers.items()}

    def run(self, *, on_round: Callable[[dict], None] | None = None,
            background: bool = False) -> dict:
        """Run the job: every domain must confirm its owner's approval first (else
        ApprovalRequired, nothing charged, the job can run later). Blocking, returning the
        public summary; or `background=True`: returns once every domain confirmed, trains in
        a thread (`wait`, `status`). The weights are taken once with `take_weights`."""
        with self._lock:
            if self.status != "awaiting_approval":
                raise Conflict(f"federated training job '{self.job_id}' is {self.status}; a job "
                               "runs once", details={"status": self.status})
            self.status = "running"
        try:
            self._ready()
        except BaseException:
            with self._lock:
                self.status = "awaiting_approval"     # nothing charged anywhere: may retry
            raise
        if background:
            threading.Thread(target=self._run_rounds, args=(on_round, False), daemon=True,
                             name=f"fedavg-{self.job_id[:8]}").start()
            return self.to_dict()
        return self._run_rounds(on_round, True)

    def cancel(self) -> None:
        """Stop a running job before its next round (charges are not refunded), or withdraw
        one that has not run."""
        with self._lock:
            waiting = self.status == "awaiting_approval"
        if waiting:
            self.withdraw()
        else:
            self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        """For background runs: True once the job is done or failed."""
        return self._done.wait(timeout)

    def _run_rounds(self, on_round, raise_errors: bool):
        try:
            return self._train(on_round)
        except SqlgateError as err:
            self._fail(err)
            if raise_errors:
                raise
        except Exception:
            err = FederationFailed("the federated training job failed at the router; no weights "
                                   "were released", details={"charged_domains": list(self.charged)})
            self._fail(err)
            if raise_errors:
                raise err from None
        finally:
            self._done.set()

    def take_weights(self) -> bytes:
        with self._lock:
            if self.status != "done":
                raise Conflict(f"federated training job '{self.job_id}' has no weights "
                               f"(status {self.status})", details={"status": self.status})
            if self._fetched or self._weights is None:
                raise ResultGone(f"the weights of federated training job '{self.job_id}' were "
                                 "already fetched; results are released once")
            weights, self._weights, self._fetched = self._weights, None, True
            return weights

    def withdraw(self) -> None:
        """Abandon a job that has not run: the pending requests are withdrawn."""
        with self._lock:
            if self.status != "awaiting_approval":
                raise Conflict(f"federated training job '{self.job_id}' is {self.status}",
                               details={"status": self.status})
            self.status = "failed"
            self.error = Conflict("the federated training job was withdrawn before it ran")
        self._done.set()
        self._end_all("failed")

    def to_dict(self) -> dict:
        return {"job_id": self.job_id, "fingerprint": self.fingerprint, "status": self.status,
                "dataset": self.terms.dataset, "analyst": self.terms.analyst,
                "rounds": self.terms.rounds, "requests": dict(self.requests),
                "charged_domains": list(self.charged), "history": list(self.history),
                "error": self.error.to_dict() if self.error else None,
                "result_available": self.status == "done" and not self._fetched}

    # ------------------------------------------------------------ phases

    def _ref(self, domain: str) -> dict:
        return {"job_id": self.job_id, "request_id": self.requests[domain],
                "fingerprint": self.fingerprint, "federation": self.terms.federation.to_dict()}

    def _ready(self) -> None:
        answers, failures = _call_each(self.router, "fedavg.ready",
                                       lambda d: ("/ready", self._ref(d)))
        if not failures:
            return
        unapproved = {d: (e.details or {}).get("approval") for d, e in failures.items()
                      if (e.details or {}).get("approval")}
        if unapproved and len(unapproved) == len(failures):
            raise ApprovalRequired(
                "not every domain's owner approved this federated training job: "
                + ", ".join(f"{d} ({a})" for d, a in sorted(unapproved.items()))
                + "; nothing was charged anywhere",
                hint="each domain's owner approves its request with POST "
                     "/v1/requests/{id}/approve at that domain",
                details={"approvals": unapproved, "requests": dict(self.requests)})
        raise _first(failures, "nothing was charged anywhere")

    def _train(self, on_round) -> dict:
        from torch_bridge.fedavg import apply_mean, flatten, initial_state   # torch: lazily
        from torch_bridge.weights import to_safetensors

        state, layout = initial_state(self.meta, self.spec)
        length = int(flatten(state).size)
        nonce = f"{int(self.router._clock())}.{secrets.token_hex(16)}"
        answers, failures = _call_each(self.router, "fedavg.start",
                                       lambda d: ("/start", dict(self._ref(d), nonce=nonce)))
        self.charged = tuple(sorted(answers))
        if failures:
            raise _first(failures, "no weights were released; domains that charged their "
                                   "ledger stay charged (no refunds)", charged=self.charged)
        for domain, body in answers.items():
            if body.get("parameters") != length:
                raise FederationMismatch(f"domain '{domain}' built a different model for this "
                                         "job; no weights were released",
                                         details={"charged_domains": list(self.charged)})
        parties = self.terms.federation.parties
        for number in range(1, self.terms.rounds + 1):
            if self._cancel.is_set():
                raise FederationFailed("the federated training job was cancelled; no weights "
                                       "were released; charges are not refunded",
                                       details={"charged_domains": list(self.charged),
                                                "round": number})
            weights = encode_weights(flatten(state))
            body = {"job_id": self.job_id, "round": number, "weights": weights}
            shares, failures = _call_each(self.router, "fedavg.round",
                                          lambda d: ("/round", body))
            if failures:
                raise _first(failures, "no weights were released; charged domains stay "
                                       "charged (no refunds)", charged=self.charged,
                             round=number)
            total = secure_sum.SecureSum(parties, length)
            for domain in parties:
                try:
                    total.add(domain, secure_sum.from_wire(shares[domain].get("share", ""),
                                                           length))
                except ValueError:
                    raise FederationFailed(f"domain '{domain}' sent a malformed share; no "
                                           "weights were released",
                                           details={"domain": domain, "round": number,
                                                    "charged_domains": list(self.charged)}
                                           ) from None
            before = flatten(state)
            state = apply_mean(state, total.total(), len(parties))
            record = {"round": number, "rounds": self.terms.rounds,
                      "update_norm": float(((flatten(state) - before) ** 2).sum() ** 0.5),
                      "epsilon_spent": {d: shares[d].get("epsilon_spent") for d in parties}}
            self.history.append(record)
            if on_round is not None:
                on_round(record)
        summary = {"job_id": self.job_id, "federated": True, "dataset": self.terms.dataset,
                   "parties": list(parties), "rounds": self.terms.rounds,
                   "update_clip": self.terms.update_clip, "layout": layout,
                   "spec": _public_spec(self.terms.spec),
                   "privacy": {d: {**answers[d].get("plan", {}),
                                   "epsilon": self.history[-1]["epsilon_spent"][d],
                                   "epsilon_charged": float(self.terms.spec["epsilon"]),
                                   "delta": float(self.terms.spec["delta"])}
                               for d in parties}}
        weights_blob = to_safetensors(state, summary)
        with self._lock:
            self._weights, self.status = weights_blob, "done"
        self._end_all("completed")
        return summary

    def _fail(self, err: SqlgateError) -> None:
        with self._lock:
            self.status, self.error, self._weights = "failed", err, None
        self._end_all("failed")

    def _end_all(self, outcome: str) -> None:
        """Tell every domain the outcome (best effort: a domain that is down learns nothing,
        and its in-memory job ends with its process)."""
        _call_each(self.router, "fedavg.end",
                   lambda d: ("/end", dict(self._ref(d), outcome=outcome)))


def prepare_training(router, spec: Mapping[str, Any], *, analyst: str, rounds: int,
                     purpose: str, sql: str | None = None, dataset: str | None = None,
                     update_clip: float = 10.0) -> FederatedTrainingJob:
    """Validate the job and file a pending approval request at every domain."""
    from torch_bridge.data import plan_training_query                  # torch-free
    from torch_bridge.spec import parse_training_spec

    if not isinstance(analyst, str) or not analyst:
        raise InvalidParameter("analyst must be a non-empty string")
    if not isinstance(purpose, str) or not purpose.strip():
        raise InvalidParameter("purpose is required: why the model is trained")
    parsed = parse_training_spec(spec, sql=sql)
    meta = training_dataset(router, parsed, dataset)
    plan_training_query(meta, parsed)          # refuse what no domain could run, before any call
    terms = JobTerms(uuid.uuid4().hex, meta.name, schema_fingerprint(meta), analyst,
                     parsed.to_dict(), check_rounds(rounds), check_update_clip(update_clip),
                     router.federation)
    body = {"job_id": terms.job_id, "dataset": meta.name, "analyst": analyst,
            "spec": parsed.to_dict(), "rounds": terms.rounds, "update_clip": terms.update_clip,
            "federation": terms.federation.to_dict(), "fingerprint": terms.fingerprint,
            "purpose": purpose}
    answers, failures = _call_each(router, "fedavg.prepare", lambda d: ("/prepare", body))
    bad = [d for d, a in answers.items() if a.get("fingerprint") != terms.fingerprint
           or not isinstance(a.get("request_id"), str)]
    job = FederatedTrainingJob(router, terms, parsed, meta,
                               {d: a["request_id"] for d, a in answers.items()
                                if isinstance(a.get("request_id"), str)})
    if failures or bad:
        # Withdraw the requests that were filed: no owner should review a dead job.
        job.status = "failed"
        _call_each(router, "fedavg.end",
                   lambda d: ("/end", dict(job._ref(d), outcome="failed")),
                   only=tuple(job.requests))
        if failures:
            raise _first(failures, "nothing was charged; requests filed at other domains were "
                                   "withdrawn")
        raise FederationMismatch(f"domain '{bad[0]}' answered for a different job")
    return job


def training_dataset(router, spec, dataset: str | None = None, scope=None):
    """The shared public metadata of the dataset a training spec reads: `dataset`, or the
    one its SQL names. `scope` (the caller's grants): other datasets look missing."""
    from sqlglot import exp

    from rewriter.parse import parse_select

    resolver = router._resolver(scope)
    if dataset is not None:
        return resolver.dataset(dataset)
    select = parse_select(spec.sql)
    source = select.args.get("from_") or select.args.get("from")
    if source is None or not isinstance(source.this, exp.Table):
        raise PolicyRefused("training SQL must read exactly one table of a federated dataset")
    meta, _ = resolver.resolve_table(source.this)
    return meta


# ---------------------------------------------------------------- fan-out


def _call_each(router, phase: str, request: Callable[[str], tuple[str, dict]],
               only: tuple[str, ...] | None = None):
    """POST to every domain (or `only` these) in parallel: (answers, failures) by domain.
    Every answer goes to the router's observer, as received."""
    futures = {}
    for name in router.federation.parties:
        if only is None or name in only:
            path, body = request(name)
            futures[name] = router._pool.submit(router._clients[name].post, PREFIX + path, body)
    return router._gather(phase, futures)


def _call_all(router, phase: str, request: Callable[[str], tuple[str, dict]]) -> dict:
    answers, failures = _call_each(router, phase, request)
    if failures:
        raise _first(failures, None)
    return answers


def _first(failures: Mapping[str, SqlgateError], hint: str | None,
           charged: tuple[str, ...] | None = None, **facts) -> SqlgateError:
    err = next(iter(failures.values()))
    err.details = dict(err.details)
    err.details["failed_domains"] = sorted(failures)
    if charged is not None:
        err.details["charged_domains"] = list(charged)
    err.details.update(facts)
    if hint:
        err.hint = hint
    return err


def _public_spec(spec: Mapping[str, Any]) -> dict:
    body = dict(spec)
    body["model"] = {k: v for k, v in dict(body["model"]).items() if k != "data"}
    return body

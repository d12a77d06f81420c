"""The router's analyst API for federated training, `/v1/federated/training`, on the router's
shared /v1 app (same auth, roles, JSON errors and audit records as every /v1 route).

    POST   /v1/federated/training {spec, rounds, purpose, sql?, dataset?, update_clip?}
             -> the job: {job_id, fingerprint, status: awaiting_approval, requests: {domain: id}}
             (needs `query` on the dataset at the router; every domain files a pending
             request for its owner, nothing is charged)
    GET    /v1/federated/training            -> {jobs: [...]} (the caller's; admins: all)
    GET    /v1/federated/training/{job_id}   -> the job, with `approvals` while it waits
    POST   /v1/federated/training/{job_id}/run     -> 409 approval_required unless every
             domain's owner approved (nothing charged); else the job, `running` (background)
    POST   /v1/federated/training/{job_id}/cancel  -> withdraw (waiting) or stop (running)
    GET    /v1/federated/training/{job_id}/weights -> safetensors, the job's analyst, once

Jobs live in the router process: a router restart ends running jobs (domains that charged
stay charged; their requests are failed when they restart or are told `end`).
"""
from __future__ import annotations

import threading

from starlette.responses import Response
from starlette.routing import Route

from server.http.endpoint import Call, endpoint
from server.router.fedavg_router import (FederatedTrainingJob, prepare_training,
                                         training_dataset)
from sqlgate.errors import NotFound

PREFIX = "/v1/federated/training"
WEIGHTS_CONTENT_TYPE = "application/x-safetensors"


class FederatedTrainingJobs:
    """The router's federated training jobs (owned by the route set: no global state)."""

    def __init__(self):
        self._jobs: dict[str, FederatedTrainingJob] = {}
        self._lock = threading.Lock()

    def add(self, job: FederatedTrainingJob) -> None:
        with self._lock:
            self._jobs[job.job_id] = job

    def visible(self, call: Call) -> list[FederatedTrainingJob]:
        with self._lock:
            jobs = list(self._jobs.values())
        return [j for j in jobs if call.user.is_admin or j.terms.analyst == call.user.name]

    def get(self, call: Call, job_id: str, *, own: bool = False) -> FederatedTrainingJob:
        """A job of the caller (admins: any, unless `own`); others' look missing."""
        with self._lock:
            job = self._jobs.get(job_id)
        mine = job is not None and job.terms.analyst == call.user.name
        if job is None or not (mine or (call.user.is_admin and not own)):
            raise NotFound(f"federated training job '{str(job_id)[:64]}' does not exist")
        call.audit.update(dataset=job.terms.dataset, details={"job_id": job.job_id})
        return job


def federated_training_routes(jobs: FederatedTrainingJobs | None = None) -> list[Route]:
    jobs = jobs or FederatedTrainingJobs()

    def create(call: Call):
        from torch_bridge.spec import parse_training_spec               # torch-free

        state, router = call.state, call.state.gateway
        spec = call.field("spec", dict)
        sql = call.field("sql", str, required=False)
        rounds = call.field("rounds", int)
        purpose = call.field("purpose", str)
        update_clip = call.field("update_clip", (int, float), required=False, default=10.0)
        parsed = parse_training_spec(spec, sql=sql)
        call.audit.update(query=parsed.sql)
        scope = state.service.queryable(call.caller)
        meta = training_dataset(router, parsed, call.field("dataset", str, required=False),
                                scope=scope)
        name = state.service.require(call.caller, meta.name, "query")
        call.audit.update(dataset=name)
        job = prepare_training(router, spec, sql=sql, dataset=name, analyst=call.user.name,
                               rounds=rounds, purpose=purpose, update_clip=update_clip)
        jobs.add(job)
        call.audit.update(details={"job_id": job.job_id, "rounds": rounds,
                                   "epsilon": parsed.epsilon, "delta": parsed.delta})
        return job.to_dict()

    def listing(call: Call):
        return {"jobs": [j.to_dict() for j in jobs.visible(call)]}

    def show(call: Call):
        job = jobs.get(call, call.param("job_id"))
        body = job.to_dict()
        if job.status == "awaiting_approval":
            body["approvals"] = job.approvals()
        return body

    def run(call: Call):
        job = jobs.get(call, call.param("job_id"), own=True)
        return job.run(background=True)

    def cancel(call: Call):
        job = jobs.get(call, call.param("job_id"), own=True)
        job.cancel()
        return job.to_dict()

    def weights(call: Call):
        job = jobs.get(call, call.param("job_id"), own=True)
        blob = job.take_weights()
        call.audit.update(details={"job_id": job.job_id, "bytes": len(blob)})
        return Response(blob, media_type=WEIGHTS_CONTENT_TYPE, headers={
            "Content-Disposition": f'attachment; filename="fedavg-{job.job_id}.safetensors"'})

    def routed(path: str, action: str, handler, method: str, json_body: bool = False) -> Route:
        return Route(PREFIX + path, endpoint(action, handler, json_body=json_body),
                     methods=[method])

    return [routed("", "federated_training.create", create, "POST", json_body=True),
            routed("", "federated_training.list", listing, "GET"),
            routed("/{job_id}", "federated_training.get", show, "GET"),
            routed("/{job_id}/run", "federated_training.run", run, "POST", json_body=True),
            routed("/{job_id}/cancel", "federated_training.cancel", cancel, "POST",
                   json_body=True),
            routed("/{job_id}/weights", "federated_training.weights", weights, "GET")]


__all__ = ["FederatedTrainingJobs", "federated_training_routes"]

"""Plug training jobs into the server's approval workflow (server/requests.py).

    from torch_bridge.server_plugin import install
    jobs = install(state)                       # state.executors["training"] = ...
    app = create_app(state, extra_routes=training_routes(jobs))

The server moves an approved request to `running` and calls the executor, which starts a
`TrainingJob` in a worker thread and returns. The job reports progress with
`requests.set_progress`, then `finish` (safetensors bytes, released once by the store's
fetch-once) or `fail`. `POST /v1/requests/{id}/cancel` (the requester or an owner) stops a
running job at its next step; the charge is not refunded.
"""
from __future__ import annotations

from sqlgate.errors import Conflict, NotFound, SqlgateError
from torch_bridge.jobs import TrainingJob, TrainingJobs
from torch_bridge.spec import parse_training_spec

KIND = "training"


def training_executor(jobs: TrainingJobs):
    """A `RequestExecutor` for kind 'training' bound to one domain's job registry."""

    def execute(state, request) -> None:
        try:
            spec = parse_training_spec(request.spec or {}, sql=request.sql)
        except SqlgateError as err:
            state.requests.fail(request.id, err.code, err.message)
            return

        def progress(job: TrainingJob) -> None:
            try:
                state.requests.set_progress(request.id, job.to_dict()["progress"])
            except Conflict:
                pass  # the request already left `running` (failed elsewhere): nothing to show

        def finish(job: TrainingJob) -> None:
            if job.status == "done":
                result = job.take_weights()
                state.requests.finish(request.id, result.weights, result.content_type,
                                      result.summary)
            else:
                state.requests.fail(request.id, job.error_code or "execution_failed",
                                    job.error_message or "the training job failed")

        jobs.submit(spec, dataset=request.dataset, analyst=request.requester, job_id=request.id,
                    on_progress=progress, on_finish=finish)

    return execute


ORPHANED = ("the server stopped while this training job was running; its privacy cost was "
            "charged at start and is not refunded; submit a new request to train again")


def install(state, jobs: TrainingJobs | None = None) -> TrainingJobs:
    """Register the runner. Called once at server start, when no job of this process runs
    yet, so a training request still `running` was orphaned by a previous process: it is
    marked failed instead of showing progress forever."""
    jobs = jobs or TrainingJobs(state.gateway)
    for request in state.requests.list(kind=KIND, status="running", limit=1000):
        try:
            state.requests.fail(request.id, "execution_failed", ORPHANED)
        except Conflict:
            pass  # it moved on meanwhile
    state.executors[KIND] = training_executor(jobs)
    return jobs


def cancel_request(state, jobs: TrainingJobs, request_id: str, user) -> dict:
    """Cancel a running training request (its requester, an owner of its dataset, an admin)."""
    request = state.requests.get(request_id)
    allowed = (getattr(user, "is_admin", False) or request.requester == user.name
               or state.users.can(user, request.dataset, "own"))
    if not allowed:
        raise NotFound(f"request '{request.id}' does not exist")
    if request.kind != KIND or request.status != "running":
        raise Conflict(f"request '{request.id}' is not a running training job "
                       f"(status {request.status})", details={"status": request.status})
    try:
        job = jobs.cancel(request.id)
    except NotFound:
        raise Conflict(f"request '{request.id}' is not running in this server") from None
    return {"id": request.id, "status": "cancelling", "job": job.to_dict()}


def training_routes(jobs: TrainingJobs) -> list:
    """Extra HTTP routes for `create_app(state, extra_routes=...)`."""
    from starlette.routing import Route

    from server.http.endpoint import endpoint

    def cancel(call):
        request_id = call.param("request_id")
        call.audit.update(details={"request_id": request_id, "kind": KIND})
        return cancel_request(call.state, jobs, request_id, call.user)

    return [Route("/v1/requests/{request_id}/cancel",
                  endpoint("request.cancel", cancel, json_body=True), methods=["POST"])]

"""Training jobs: run one approved DP-SGD job in a worker thread, with progress and cancel.

Order inside a job (privacy rules 4 and 5):
1. validate the spec and the SQL against metadata, build the model (no data, no budget);
2. charge the ledger for the full target (epsilon, delta): the weights are the release, and
   a job cancelled or failed after this point is not refunded;
3. select the data in the domain, noisy-count the units, calibrate sigma, train;
4. serialise the parameters (safetensors) for one download.

Callers must hold an owner approval: `torch_bridge.server_plugin` only starts a job for a
request the store moved to `running` (which needs `approved`).

Progress holds public facts only: epoch/step counters, the noisy loss (released by the
DP-SGD mechanism itself, see dpsgd.py) and epsilon spent so far (a function of the step).
Errors shown to the analyst come from `SqlgateError`s (query text + metadata) or are generic.
"""
from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable

from sqlgate.errors import Conflict, NotFound, QueryCanceled, SqlgateError
from torch_bridge.accounting import job_cost, plan_sgd, split_epsilon
from torch_bridge.data import TrainingQuery, plan_training_query, select_units
from torch_bridge.dpsgd import DPSGDTrainer, Progress, TrainingCanceled
from torch_bridge.models import build_model
from torch_bridge.noise import noisy_count
from torch_bridge.spec import TrainingSpec
from torch_bridge.weights import CONTENT_TYPE, to_safetensors

STATUSES = ("queued", "running", "done", "failed", "canceled")
WITHHELD = ("the training job failed while running on private data; details are withheld "
            "because they may depend on private values")


class ResultAlreadyFetched(Conflict):
    code = "result_gone"
    http_status = 410


@dataclass(frozen=True)
class TrainedModel:
    weights: bytes
    summary: dict
    content_type: str = CONTENT_TYPE


def validate_job(gateway, dataset: str, spec: TrainingSpec) -> TrainingQuery:
    """Everything checkable without data or budget (used at submission and at start)."""
    meta = gateway.dataset(dataset)
    query = plan_training_query(meta, spec)
    build_model(spec.model, query.input_width, query.label.outputs, spec.seed)
    return query


def train(gateway, dataset: str, analyst: str, spec: TrainingSpec, *, job_id: str,
          on_progress: Callable[[Progress], None] | None = None,
          cancel: threading.Event | None = None,
          on_charged: Callable[[], None] | None = None) -> TrainedModel:
    """Run one job synchronously (the worker thread's body)."""
    meta = gateway.dataset(dataset)
    query = plan_training_query(meta, spec)
    model = build_model(spec.model, query.input_width, query.label.outputs, spec.seed)
    if cancel is not None and cancel.is_set():
        raise TrainingCanceled()
    gateway.accountant.charge(analyst, meta.name, job_cost(spec.epsilon, spec.delta),
                              query_key=f"training:{job_id}", query_text=spec.sql)
    if on_charged is not None:
        on_charged()
    # Budget spent from here on (no refund).
    data = select_units(gateway, query)
    split = split_epsilon(spec.epsilon, spec.delta)
    plan = plan_sgd(noisy_count(data.units, split.count_epsilon), spec.batch_size,
                    spec.epochs, split)
    trainer = DPSGDTrainer(model, spec, plan, data)
    try:
        trainer.run(plan.steps, on_progress=on_progress, cancel=cancel)
    finally:
        trainer.close()
    final_epsilon = plan.epsilon_after(plan.steps)
    info = {"dataset": meta.name, "job_id": job_id, "spec": _public_spec(spec),
            "layout": query.layout(), "privacy": {**plan.to_dict(), "epsilon": final_epsilon,
                                                  "epsilon_charged": spec.epsilon,
                                                  "unit_level": True}}
    weights = to_safetensors(trainer.state(), info)
    summary = {"parameters": trainer.dim, "steps": plan.steps, "epochs": spec.epochs,
               "epsilon": final_epsilon, "delta": spec.delta, "noisy_units": plan.noisy_units,
               "bytes": len(weights)}
    return TrainedModel(weights, summary)


def _public_spec(spec: TrainingSpec) -> dict:
    body = spec.to_dict()
    body["model"] = {k: v for k, v in body["model"].items() if k != "data"}
    return body


@dataclass
class TrainingJob:
    id: str
    dataset: str
    analyst: str
    spec: TrainingSpec
    status: str = "queued"
    progress: Progress | None = None
    error_code: str | None = None
    error_message: str | None = None
    charged: bool = False
    summary: dict | None = None
    _result: TrainedModel | None = None
    _fetched: bool = False
    _cancel: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cancel(self) -> None:
        """Stop at the next step. The charge (if made) is not refunded."""
        self._cancel.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def take_weights(self) -> TrainedModel:
        """The trained weights, exactly once."""
        with self._lock:
            if self.status != "done":
                raise Conflict(f"training job '{self.id}' has no weights (status {self.status})",
                               details={"status": self.status})
            if self._fetched or self._result is None:
                raise ResultAlreadyFetched(f"the weights of training job '{self.id}' were "
                                           f"already fetched; results are released once")
            result, self._result, self._fetched = self._result, None, True
            return result

    def to_dict(self) -> dict:
        return {"id": self.id, "dataset": self.dataset, "analyst": self.analyst,
                "status": self.status, "charged": self.charged,
                "progress": self.progress.to_dict() if self.progress else None,
                "error_code": self.error_code, "error_message": self.error_message,
                "summary": self.summary, "result_available": self.status == "done"
                and not self._fetched}


class TrainingJobs:
    """The jobs of one domain (one Gateway). No global state: owned by the server state."""

    def __init__(self, gateway):
        self.gateway = gateway
        self._jobs: dict[str, TrainingJob] = {}
        self._lock = threading.Lock()

    def submit(self, spec: TrainingSpec, *, dataset: str, analyst: str,
               job_id: str | None = None,
               on_progress: Callable[[TrainingJob], None] | None = None,
               on_finish: Callable[[TrainingJob], None] | None = None) -> TrainingJob:
        """Start an APPROVED job in a worker thread and return at once."""
        job = TrainingJob(job_id or uuid.uuid4().hex, dataset, analyst, spec)
        with self._lock:
            if job.id in self._jobs:
                raise Conflict(f"training job '{job.id}' already exists")
            self._jobs[job.id] = job
        thread = threading.Thread(target=self._run, args=(job, on_progress, on_finish),
                                  name=f"training-{job.id[:8]}", daemon=True)
        thread.start()
        return job

    def get(self, job_id: str) -> TrainingJob:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"training job '{str(job_id)[:64]}' does not exist")
        return job

    def cancel(self, job_id: str) -> TrainingJob:
        job = self.get(job_id)
        job.cancel()
        return job

    def _run(self, job: TrainingJob, on_progress, on_finish) -> None:
        def progress(p: Progress) -> None:
            job.progress = p
            if on_progress is not None:
                on_progress(job)

        def charged() -> None:
            job.charged = True

        job.status = "running"
        try:
            result = train(self.gateway, job.dataset, job.analyst, job.spec, job_id=job.id,
                           on_progress=progress, cancel=job._cancel, on_charged=charged)
        except TrainingCanceled:
            job.status = "canceled"
            job.error_code = QueryCanceled.code
            job.error_message = ("the training job was cancelled" +
                                 ("; its privacy cost is not refunded" if job.charged else
                                  " before it was charged"))
        except SqlgateError as err:
            # Built from the spec, the query text and public metadata only.
            job.status, job.error_code, job.error_message = "failed", err.code, err.message
        except Exception:  # noqa: BLE001 - anything else may quote data: withhold it
            job.status, job.error_code, job.error_message = "failed", "execution_failed", WITHHELD
        else:
            job._result = result
            job.summary = result.summary
            job.status = "done"
        finally:
            try:
                if on_finish is not None:
                    on_finish(job)
            finally:
                job._done.set()

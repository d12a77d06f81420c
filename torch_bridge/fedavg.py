"""Federated averaging across domains: local DP-SGD per round, updates combined by secure sum.

Each domain (its own Gateway, ledger and data) runs `LocalTrainer`:
* `prepare`: validate the job, build the common initial model, charge ITS ledger the full
  (epsilon, delta) once, select its partition, noisy-count it and calibrate sigma for all
  rounds together (rounds * epochs * steps_per_epoch steps of the same sampled Gaussian:
  RDP composes adaptively across rounds, so starting each round from the previous global
  model is covered);
* `train_round(global)`: local DP-SGD from the global weights for `spec.epochs` epochs; the
  update (local - global) is clipped to L2 norm `update_clip` and fixed-point encoded;
* `share(...)`: the encoded update masked with `server.secure_sum.mask_share`.

The aggregator only ever sees masked shares; `SecureSum.total()` gives the sum of updates,
the global model moves by its mean. Every update is already differentially private for the
domain's units (post-processing of its DP-SGD run), so the secure sum protects the domains'
updates from each other and from the aggregator, not the units (that is DP's job). The
in-process orchestrator `federated_average` plays the router's role for tests and embedded
use; across machines the same calls run behind the router: server/router/fedavg_domain.py
(a domain: charge + load at `start`, one `train_round` + `share` per `round`) and
server/router/fedavg_router.py (the router: secure sum, `apply_mean`, broadcast).
"""
from __future__ import annotations

import math
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from server.secure_sum import SecureSum, encode_signed, mask_context, mask_share
from sqlgate.errors import InvalidParameter
from torch_bridge.accounting import SgdPlan, job_cost, plan_sgd, split_epsilon
from torch_bridge.data import TrainingQuery, plan_training_query, select_units
from torch_bridge.dpsgd import DPSGDTrainer, Progress
from torch_bridge.models import build_model
from torch_bridge.noise import noisy_count
from torch_bridge.spec import TrainingSpec
from torch_bridge.weights import to_safetensors

FIXED_POINT_BITS = 24
MAX_ROUNDS = 1_000


@dataclass(frozen=True)
class Party:
    name: str
    gateway: object          # sqlgate.gateway.Gateway of that domain
    dataset: str
    analyst: str


def flatten(state: Mapping[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate([t.detach().reshape(-1).to(torch.float64).numpy() for t in state.values()])


def unflatten(vector: np.ndarray, like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for name, t in like.items():
        n = t.numel()
        out[name] = torch.from_numpy(vector[offset:offset + n].copy()).to(t.dtype).view_as(t)
        offset += n
    return out


def encode_update(delta: np.ndarray, update_clip: float) -> list[int]:
    """Clip to L2 norm `update_clip`, then round to fixed point (2^-24 resolution)."""
    norm = float(np.linalg.norm(delta))
    if not math.isfinite(norm):
        delta, norm = np.zeros_like(delta), 0.0
    if norm > update_clip:
        delta = delta * (update_clip / norm)
    return [int(v) for v in np.rint(delta * (1 << FIXED_POINT_BITS))]


def decode_mean(total: Sequence[int], parties: int) -> np.ndarray:
    return np.asarray(total, dtype=np.float64) / ((1 << FIXED_POINT_BITS) * parties)


class LocalTrainer:
    """One domain's side of a federated job."""

    def __init__(self, party: Party, spec: TrainingSpec, rounds: int, job_id: str):
        self.party = party
        self.spec = spec
        self.rounds = rounds
        self.job_id = job_id
        meta = party.gateway.dataset(party.dataset)
        self.dataset = meta.name
        self.query: TrainingQuery = plan_training_query(meta, spec)
        self.model = build_model(spec.model, self.query.input_width, self.query.label.outputs,
                                 spec.seed)
        self.plan: SgdPlan | None = None
        self.trainer: DPSGDTrainer | None = None

    def initial_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def prepare(self) -> SgdPlan:
        """Charge this domain's ledger (full target, once), then select and plan."""
        self.charge()
        return self.load()

    def charge(self) -> None:
        """Charge this domain's ledger for the whole job (all rounds), before any data is
        read. Raises BudgetExhausted (nothing written) when it does not fit."""
        self.party.gateway.accountant.charge(
            self.party.analyst, self.dataset, job_cost(self.spec.epsilon, self.spec.delta),
            query_key=f"fedavg:{self.job_id}", query_text=self.spec.sql)

    def load(self) -> SgdPlan:
        """After `charge`: select the partition, noisy-count it, calibrate sigma for all
        rounds together."""
        data = select_units(self.party.gateway, self.query)
        split = split_epsilon(self.spec.epsilon, self.spec.delta)
        self.plan = plan_sgd(noisy_count(data.units, split.count_epsilon), self.spec.batch_size,
                             self.spec.epochs, split, rounds=self.rounds)
        self.trainer = DPSGDTrainer(self.model, self.spec, self.plan, data)
        return self.plan

    def train_round(self, global_state: Mapping[str, torch.Tensor], update_clip: float,
                    cancel: threading.Event | None = None) -> list[int]:
        if self.trainer is None or self.plan is None:
            raise RuntimeError("prepare() first")
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(global_state[name])
        self.trainer.run(self.plan.steps_per_epoch * self.spec.epochs,
                         total_epochs=self.spec.epochs * self.rounds, cancel=cancel)
        delta = flatten(self.trainer.state()) - flatten(global_state)
        return encode_update(delta, update_clip)

    def share(self, encoded: Sequence[int], parties: Sequence[str],
              pair_keys: Mapping[str, bytes], context: bytes) -> np.ndarray:
        return mask_share(self.party.name, list(parties), encode_signed(encoded), pair_keys,
                          context)

    def close(self) -> None:
        """Stop the trainer's background samplers (the job ended, whatever the outcome)."""
        if self.trainer is not None:
            self.trainer.close()

    def epsilon_spent(self) -> float:
        if self.plan is None or self.trainer is None:
            return 0.0
        return self.plan.epsilon_after(self.trainer.steps_done)


def initial_state(meta, spec: TrainingSpec) -> tuple[dict[str, torch.Tensor], dict]:
    """The common starting model of a job (deterministic from spec.seed) and its public input
    layout, from metadata only: what a router needs to start the rounds and to label the
    released weights."""
    query = plan_training_query(meta, spec)
    model = build_model(spec.model, query.input_width, query.label.outputs, spec.seed)
    return {n: p.detach().clone() for n, p in model.named_parameters()}, query.layout()


def apply_mean(state: Mapping[str, torch.Tensor], total: Sequence[int],
               parties: int) -> dict[str, torch.Tensor]:
    """The next global model: previous + mean of the (clipped, fixed-point) updates."""
    return unflatten(flatten(state) + decode_mean(total, parties), state)


def pairwise_keys(names: Sequence[str]) -> dict[str, dict[str, bytes]]:
    """Fresh pair keys for an in-process run (across machines they are configured)."""
    keys: dict[str, dict[str, bytes]] = {n: {} for n in names}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            key = secrets.token_bytes(32)
            keys[a][b] = keys[b][a] = key
    return keys


@dataclass
class FedAvgResult:
    weights: bytes
    state: dict[str, torch.Tensor]
    rounds: list[dict] = field(default_factory=list)


def federated_average(parties: Sequence[Party], spec: TrainingSpec, *, rounds: int,
                      update_clip: float = 10.0, job_id: str | None = None,
                      pair_keys: Mapping[str, Mapping[str, bytes]] | None = None,
                      on_round: Callable[[dict], None] | None = None,
                      cancel: threading.Event | None = None) -> FedAvgResult:
    if not 1 <= rounds <= MAX_ROUNDS:
        raise InvalidParameter(f"rounds must be from 1 to {MAX_ROUNDS}")
    if not (update_clip > 0 and math.isfinite(update_clip)):
        raise InvalidParameter("update_clip must be a positive number")
    names = [p.name for p in parties]
    if len(names) < 2 or len(set(names)) != len(names):
        raise InvalidParameter("federated averaging needs at least two distinct parties")
    job_id = job_id or uuid.uuid4().hex
    keys = pair_keys or pairwise_keys(names)
    # Validate everywhere before any domain is charged.
    locals_ = [LocalTrainer(p, spec, rounds, job_id) for p in parties]
    layouts = {repr(t.query.layout()["inputs"]) for t in locals_}
    if len(layouts) != 1:
        raise InvalidParameter("the parties' datasets encode the selected columns differently; "
                               "federated training needs identical metadata for them")
    try:
        return _run_rounds(locals_, names, keys, rounds, update_clip, job_id, on_round, cancel)
    finally:
        for trainer in locals_:
            trainer.close()


def _run_rounds(locals_: list[LocalTrainer], names: list[str], keys, rounds: int,
                update_clip: float, job_id: str, on_round, cancel) -> FedAvgResult:
    global_state = locals_[0].initial_state()
    plans = [t.prepare() for t in locals_]
    history = []
    for r in range(1, rounds + 1):
        context = mask_context("sqlgate/fedavg", job_id, str(r), ",".join(names))
        aggregate = SecureSum(tuple(names), sum(t.numel() for t in global_state.values()))
        for trainer in locals_:
            encoded = trainer.train_round(global_state, update_clip, cancel)
            aggregate.add(trainer.party.name, trainer.share(encoded, names, keys[trainer.party.name],
                                                            context))
        total = aggregate.total()
        mean = decode_mean(total, len(names))
        global_state = apply_mean(global_state, total, len(names))
        record = {"round": r, "rounds": rounds, "update_norm": float(np.linalg.norm(mean)),
                  "epsilon_spent": {t.party.name: t.epsilon_spent() for t in locals_}}
        history.append(record)
        if on_round is not None:
            on_round(record)
    info = {"job_id": job_id, "federated": True, "parties": names, "rounds": rounds,
            "layout": locals_[0].query.layout(),
            "privacy": {t.party.name: {**plan.to_dict(), "epsilon": t.epsilon_spent()}
                        for t, plan in zip(locals_, plans)}}
    return FedAvgResult(to_safetensors(global_state, info), global_state, history)


__all__ = ["FedAvgResult", "LocalTrainer", "Party", "Progress", "apply_mean", "decode_mean",
           "encode_update", "federated_average", "flatten", "initial_state", "pairwise_keys",
           "unflatten"]

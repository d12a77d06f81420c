"""DP-SGD with user-level (per-unit) clipping, Poisson sampling over units, OpenDP noise.

One step:
1. Poisson-sample units: each unit is in the batch independently with probability q.
2. Per-unit gradient of the unit's mean loss over its (at most k) rows, clipped to L2 norm
   C (a non-finite gradient counts as zero), summed over the batch:
   * Linear/activation stacks (the declarative models): one batched backward and ghost
     clipping (norms from the layer factors, one weighted matmul per layer for the sum);
   * other eager models: torch.func `vmap(grad_and_value(...))`, then clip and sum;
   * TorchScript: a per-unit autograd loop (slower), then clip and sum.
3. (The three ways give the same clipped sum; tests compare them.)
4. Append each unit's loss, clamped to [0, L] and scaled to [0, C_loss] (C_loss = C/10):
   the progress loss is then released by the same Gaussian mechanism instead of leaking
   un-noised. The per-unit vector has L2 norm <= S = sqrt(C^2 + C_loss^2).
5. Sum, add discrete Gaussian noise of multiplier sigma with OpenDP on a fixed-point lattice
   (`torch_bridge.noise.LatticeGaussian`), divide by the expected batch (public: q * noisy
   unit count), and let the optimiser (SGD/Adam: post-processing) step.

Sensitivity: adding or removing one unit changes the summed vector by at most S in L2,
whatever its number of rows, because each unit is clipped as a whole. The accountant in
`torch_bridge.accounting` analyses exactly this sampled Gaussian mechanism.

Batch membership comes from a CSPRNG (`torch_bridge.sampling`: ChaCha20 keyed by the OS),
never an analyst seed: amplification by sampling needs the batches to be secret and
unpredictable. The noise does not depend on the data, so it is drawn ahead on background
threads; `close()` stops them.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

from torch_bridge.accounting import SgdPlan
from torch_bridge.data import UnitData
from torch_bridge.models import is_scripted
from torch_bridge.noise import LatticeGaussian
from torch_bridge.sampling import PoissonBatches
from torch_bridge.spec import TrainingSpec

LOSS_SHARE = 0.1
VMAP_CHUNK = 2048
CLIP_MARGIN = 1.0 - 1e-5


class TrainingCanceled(Exception):
    """Raised inside the training loop when its cancel event is set."""


@dataclass(frozen=True)
class Progress:
    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float | None
    """Mean over the epoch's steps of the noisy, clamped per-unit loss (a DP release)."""
    epsilon_spent: float
    epsilon_target: float
    delta: float

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "epochs": self.epochs, "step": self.step,
                "steps": self.steps,
                "loss": None if self.loss is None or not math.isfinite(self.loss)
                else round(self.loss, 6),
                "epsilon_spent": round(self.epsilon_spent, 6),
                "epsilon_target": self.epsilon_target, "delta": self.delta}


_ELEMENTWISE = (torch.nn.ReLU, torch.nn.Tanh, torch.nn.GELU, torch.nn.Sigmoid)


def _linear_stack(model: torch.nn.Module) -> list[torch.nn.Module] | None:
    """The layers of a plain Linear / Sequential(Linear, activation, ...) model, else None."""
    if is_scripted(model):
        return None
    if isinstance(model, torch.nn.Linear):
        return [model]
    if not isinstance(model, torch.nn.Sequential):
        return None
    layers = list(model)
    if not layers or not all(isinstance(m, (torch.nn.Linear,) + _ELEMENTWISE) for m in layers):
        return None
    if any(not isinstance(m, torch.nn.Linear) and any(True for _ in m.parameters())
           for m in layers) or any(m.bias is None for m in layers
                                   if isinstance(m, torch.nn.Linear)):
        return None
    return layers


def row_losses(task_loss: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task_loss == "cross_entropy":
        return F.cross_entropy(out, y.long(), reduction="none")
    flat = out.reshape(y.shape)
    if task_loss == "bce":
        return F.binary_cross_entropy_with_logits(flat, y, reduction="none")
    if task_loss == "mse":
        return (flat - y) ** 2
    return F.huber_loss(flat, y, reduction="none")


class DPSGDTrainer:
    """Trains `model` in place; `step`/`run` can be called repeatedly (FedAvg rounds)."""

    def __init__(self, model: torch.nn.Module, spec: TrainingSpec, plan: SgdPlan,
                 data: UnitData):
        self.model = model
        self.spec = spec
        self.plan = plan
        x, y, mask = (torch.from_numpy(a) for a in (data.x, data.y, data.mask))
        # One [units, rows, features + 2] tensor so a step gathers its batch once; x, y and
        # mask are views of it.
        self._rows = torch.cat([x, y.to(x.dtype)[..., None], mask.to(x.dtype)[..., None]],
                               dim=2)
        width = x.shape[2]
        self.x = self._rows[..., :width]
        self.y = self._rows[..., width]
        self.mask = self._rows[..., width + 1]
        self.units = data.units
        self.names = [n for n, _ in model.named_parameters()]
        self.params = [p for _, p in model.named_parameters()]
        self.dim = sum(p.numel() for p in self.params)
        self.clip = spec.max_grad_norm
        self.loss_clip = spec.max_grad_norm * LOSS_SHARE
        self.loss_bound = spec.effective_loss_bound
        sensitivity = math.sqrt(self.clip ** 2 + self.loss_clip ** 2)
        self.noise = LatticeGaussian(self.dim + 1, plan.noise_multiplier, sensitivity,
                                     steps=plan.steps)
        self.batches = PoissonBatches(self.units, plan.sample_rate)
        self.optimizer = self._optimizer()
        self._stack = _linear_stack(model)
        if is_scripted(model):
            self._per_unit = self._scripted_grads
        elif self._stack is not None:
            self._per_unit = self._stack_grads
        else:
            self._per_unit = self._vmap_grads()
        self.steps_done = 0

    # ------------------------------------------------------------------ public

    def step(self) -> float:
        """One DP-SGD step; returns the noisy mean loss of the step (a DP release)."""
        batch = self.batches.next()
        total = torch.zeros(self.dim + 1, dtype=torch.float64)
        for start in range(0, len(batch), VMAP_CHUNK):
            index = torch.from_numpy(batch[start:start + VMAP_CHUNK])
            rows = self._rows[index]
            chunk = self._clip_and_sum(rows[..., :-2], rows[..., -2], rows[..., -1])
            total = chunk if start == 0 else total + chunk
        noisy = torch.from_numpy(self.noise(total.numpy()))
        scale = 1.0 / self.plan.expected_batch
        update = (noisy[:-1] * scale).to(torch.float32)
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = update[offset:offset + n].view_as(p)   # `update` is fresh each step
            offset += n
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps_done += 1
        return float(noisy[-1]) * scale * self.loss_bound / self.loss_clip

    def run(self, steps: int, *, total_epochs: int | None = None,
            on_progress: Callable[[Progress], None] | None = None,
            cancel: threading.Event | None = None) -> list[float]:
        """Run `steps` steps, reporting progress at each epoch end. Returns epoch losses."""
        total_epochs = total_epochs or self.spec.epochs
        per_epoch = self.plan.steps_per_epoch
        epoch_losses: list[float] = []
        running: list[float] = []
        for i in range(steps):
            if cancel is not None and cancel.is_set():
                raise TrainingCanceled()
            running.append(self.step())
            if self.steps_done % per_epoch == 0 or i == steps - 1:
                loss = float(np.mean(running))
                epoch_losses.append(loss)
                running = []
                if on_progress is not None:
                    on_progress(Progress(
                        epoch=math.ceil(self.steps_done / per_epoch), epochs=total_epochs,
                        step=self.steps_done, steps=self.plan.steps, loss=loss,
                        epsilon_spent=self.plan.epsilon_after(self.steps_done),
                        epsilon_target=self.spec.epsilon, delta=self.spec.delta))
        return epoch_losses

    def close(self) -> None:
        """Stop drawing noise ahead (job finished, failed or cancelled)."""
        self.noise.close()

    def state(self) -> dict[str, torch.Tensor]:
        """The trained parameters only (never buffers): what may be released."""
        return {n: p.detach().clone().contiguous() for n, p in zip(self.names, self.params)}

    # ------------------------------------------------------------------ internals

    def _optimizer(self) -> torch.optim.Optimizer:
        if self.spec.optimizer == "adam":
            return torch.optim.Adam(self.params, lr=self.spec.lr)
        return torch.optim.SGD(self.params, lr=self.spec.lr, momentum=self.spec.momentum)

    def _unit_loss(self, out: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        per_row = row_losses(self.spec.loss, out, y)
        return (per_row * mask).sum() / mask.sum().clamp(min=1.0)

    def _vmap_grads(self):
        model = self.model
        names = self.names

        def loss_of(params: dict, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor):
            return self._unit_loss(functional_call(model, params, (x,)), y, mask)

        per_unit = vmap(grad_and_value(loss_of), in_dims=(None, 0, 0, 0))

        def compute(x, y, mask):
            params = {n: p.detach() for n, p in zip(names, self.params)}
            grads, losses = per_unit(params, x, y, mask)
            flat = torch.cat([grads[n].reshape(x.shape[0], -1) for n in names], dim=1)
            return flat, losses.detach()

        return compute

    def _clip_and_sum(self, x, y, mask) -> torch.Tensor:
        """Sum over the given units of their clipped (gradient, scaled loss) vectors."""
        if self._stack is not None:
            return self._stack_clipped_sum(x, y, mask)
        grads, losses = self._per_unit(x, y, mask)
        return self._clipped_sum(grads, losses)

    def _stack_forward(self, x, y, mask):
        """Layer inputs a_l, pre-activation backprops g_l ([b*k, .]) and unit losses [b].

        A unit's loss depends only on its own rows, so the gradient of the SUM of unit
        losses w.r.t. a row's pre-activation is that row's backprop for its own unit's loss
        (the basis of Opacus' grad samplers and of ghost clipping).
        """
        b, k = x.shape[0], x.shape[1]
        h = x.reshape(b * k, -1)
        inputs, pre_activations = [], []
        for module in self._stack:
            if isinstance(module, torch.nn.Linear):
                inputs.append(h.detach())
                h = F.linear(h, module.weight, module.bias)
                pre_activations.append(h)
            else:
                h = module(h)
        per_row = row_losses(self.spec.loss, h, y.reshape(-1)).view(b, k)
        if k == 1:  # the mean over one row is the row (or nothing: a unit without rows)
            unit_losses = per_row.view(b) * mask.view(b)
        else:
            unit_losses = (per_row * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        backprops = torch.autograd.grad(unit_losses.sum(), pre_activations)
        return inputs, backprops, unit_losses.detach()

    def _stack_grads(self, x, y, mask):
        """Materialised per-unit gradients [b, d] of a Linear/activation stack: a Linear
        layer's is sum_rows g_row (x) a_row, and sum_rows g_row for its bias."""
        b, k = x.shape[0], x.shape[1]
        inputs, backprops, unit_losses = self._stack_forward(x, y, mask)
        parts = []
        for a, g in zip(inputs, backprops):
            g3, a3 = g.view(b, k, -1), a.view(b, k, -1)
            parts.append(torch.einsum("bko,bki->boi", g3, a3).reshape(b, -1))
            parts.append(g3.sum(dim=1))
        return torch.cat(parts, dim=1), unit_losses

    def _stack_clipped_sum(self, x, y, mask) -> torch.Tensor:
        """Ghost clipping (Li et al. 2022; Bu et al. 2023): the per-unit gradient norms from
        the factors, ||sum_r g_r a_r^T||_F^2 = sum_{r,s} (a_r.a_s)(g_r.g_s), then ONE weighted
        matmul per layer for the clipped sum, without materialising [b, d] gradients.
        Equal to `_clipped_sum(_stack_grads(...))` up to float rounding (tested)."""
        b, k = x.shape[0], x.shape[1]
        inputs, backprops, unit_losses = self._stack_forward(x, y, mask)
        if k == 1:
            return self._one_row_clipped_sum(inputs, backprops, unit_losses)
        layers = [(a.view(b, k, -1), g.view(b, k, -1)) for a, g in zip(inputs, backprops)]
        norms2 = torch.zeros(b, dtype=torch.float64)
        for a3, g3 in layers:
            a64, g64 = a3.to(torch.float64), g3.to(torch.float64)
            if k == 1:
                norms2 += (a64[:, 0] ** 2).sum(dim=1) * (g64[:, 0] ** 2).sum(dim=1)
            else:
                norms2 += (torch.einsum("bri,bsi->brs", a64, a64)
                           * torch.einsum("bro,bso->brs", g64, g64)).sum(dim=(1, 2))
            norms2 += (g64.sum(dim=1) ** 2).sum(dim=1)
        norms = norms2.sqrt()
        finite = torch.isfinite(norms)
        # A unit whose gradient is not finite contributes zero (norm 0 <= C).
        factor = torch.where(finite, torch.clamp(self.clip * CLIP_MARGIN / (norms + 1e-12),
                                                 max=1.0), torch.zeros_like(norms))
        parts = []
        for a3, g3 in layers:
            keep = finite[:, None, None]
            a3 = torch.where(keep, a3, torch.zeros_like(a3))
            g3 = torch.where(keep, g3, torch.zeros_like(g3)) * factor.to(g3.dtype)[:, None, None]
            parts.append(torch.einsum("bko,bki->oi", g3, a3).reshape(-1).to(torch.float64))
            parts.append(g3.sum(dim=(0, 1)).to(torch.float64))
        return torch.cat(parts + [self._loss_part(unit_losses)])

    def _one_row_clipped_sum(self, inputs, backprops, unit_losses) -> torch.Tensor:
        """`_stack_clipped_sum` when every unit has one row: a Linear layer's per-unit
        gradient is the outer product g a^T plus g for the bias, of squared norm
        |g|^2 (|a|^2 + 1), so no [b, k, k] Gram matrices and one matmul per layer."""
        f64 = torch.float64
        # float64 throughout: exact enough for the clip guarantee, and the sum is float64.
        inputs = [a.to(f64) for a in inputs]
        backprops = [g.to(f64) for g in backprops]
        norms2 = None
        for a, g in zip(inputs, backprops):
            layer = (torch.linalg.vecdot(a, a) + 1.0) * torch.linalg.vecdot(g, g)
            norms2 = layer if norms2 is None else norms2 + layer
        norms = norms2.sqrt()
        factor = torch.clamp(self.clip * CLIP_MARGIN / (norms + 1e-12), max=1.0)
        if not bool(torch.isfinite(norms2.sum())):
            finite = torch.isfinite(norms)
            # A finite norm implies finite factors (|a|^2 + 1 >= 1); a unit whose gradient
            # is not finite contributes zero (norm 0 <= C).
            factor = torch.where(finite, factor, torch.zeros_like(factor))
            keep = finite[:, None]
            inputs = [torch.where(keep, a, torch.zeros_like(a)) for a in inputs]
            backprops = [torch.where(keep, g, torch.zeros_like(g)) for g in backprops]
        parts = []
        for a, g in zip(inputs, backprops):
            scaled = g * factor[:, None]
            parts.append((scaled.t() @ a).reshape(-1))
            parts.append(scaled.sum(dim=0))
        return torch.cat(parts + [self._loss_part(unit_losses)])

    def _scripted_grads(self, x, y, mask):
        flats, losses = [], []
        for u in range(x.shape[0]):
            loss = self._unit_loss(self.model(x[u]), y[u], mask[u])
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            flats.append(torch.cat([torch.zeros(p.numel()) if g is None else g.reshape(-1)
                                    for g, p in zip(grads, self.params)]))
            losses.append(loss.detach())
        return torch.stack(flats), torch.stack(losses)

    def _clipped_sum(self, flat: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        norms = flat.norm(dim=1)
        finite = torch.isfinite(norms)
        if not bool(finite.all()):
            # A unit whose gradient is not finite contributes zero (norm 0 <= C).
            flat, norms = flat[finite], norms[finite]
        # Aim a hair below C so float rounding can never leave a clipped norm above C.
        factor = torch.clamp(self.clip * CLIP_MARGIN / (norms + 1e-12), max=1.0)
        grad_sum = (factor @ flat).to(torch.float64)
        return torch.cat([grad_sum, self._loss_part(losses)])

    def _loss_part(self, losses: torch.Tensor) -> torch.Tensor:
        """Sum of per-unit losses clamped to [0, L] and scaled to [0, C_loss]."""
        losses = torch.nan_to_num(losses.to(torch.float64), nan=self.loss_bound,
                                  posinf=self.loss_bound, neginf=0.0)
        return losses.clamp_(0.0, self.loss_bound).div_(self.loss_bound).mul_(self.loss_clip) \
            .sum().reshape(1)

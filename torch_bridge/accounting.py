"""Privacy accounting of a DP-SGD job: calibration, the spent-so-far curve, the ledger cost.

One job is two mechanisms, composed by basic composition (epsilons add, deltas add):

1. A noisy count of the selected units (OpenDP integer Laplace, `COUNT_SHARE` of epsilon).
   DP-SGD's sample rate q = batch_size / N and its number of steps depend on N; using the
   true N would make the mechanism itself data-dependent. With the noisy N they are
   post-processing of a DP release, and the DP-SGD guarantee below holds for every value
   of it (adaptive composition).
2. T steps of the Poisson-subsampled Gaussian mechanism (per-unit clipping to C, discrete
   Gaussian noise of multiplier sigma relative to S, the L2 sensitivity of one unit's
   vector), analysed with the RDP accountant of Mironov, Talwar & Zhang 2019 as implemented
   by Opacus (`opacus.accountants.analysis.rdp`) at integer orders, converted to
   (epsilon, delta) once at the end.
   sigma is the smallest (to 1%) that keeps that epsilon <= the DP-SGD share.

Ledger. The whole job is (epsilon_target, delta)-DP. On a `pure` dataset that is charged as
(epsilon, delta) under basic composition. On a `zcdp` dataset it is charged as the same
`pure` cost, which the accountant maps to delta-approximate (epsilon^2/2)-zCDP (Bun &
Steinke 2016, Prop. 1.13, see accountant/budget.py `rho_of`): sound, but expensive in rho,
because the subsampled Gaussian's RDP curve is not linear in alpha and so has no useful
rho of its own. The full target is charged at job start, before any data is read: the
weights are the release, and a cancelled or failed job is not refunded (rule 4).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from accountant.cost import PrivacyCost

COUNT_SHARE = 0.02
# Renyi orders evaluated: integers only. The noise is OpenDP's discrete Gaussian
# (`torch_bridge.noise`), whose subsampled RDP is bounded by Opacus' continuous-Gaussian value
# at integer orders (Zhu & Wang 2019's Poisson-subsampling bound with Canonne-Kamath-Steinke's
# discrete Gaussian RDP); Opacus' fractional-order formula is specific to the continuous one.
# Any order set gives a valid bound; a coarser one can only make it slightly looser.
RDP_ORDERS = tuple(list(range(2, 65)) + [80, 96, 128, 160, 192, 256, 384, 512, 1024])
MAX_SIGMA = 1e4
MAX_STEPS = 1_000_000


@dataclass(frozen=True)
class EpsilonSplit:
    count_epsilon: float
    sgd_epsilon: float
    delta: float


def split_epsilon(epsilon: float, delta: float) -> EpsilonSplit:
    count = epsilon * COUNT_SHARE
    return EpsilonSplit(count, epsilon - count, delta)


def job_cost(epsilon: float, delta: float) -> PrivacyCost:
    """What the ledger is charged for a whole job (see the module docstring)."""
    return PrivacyCost("pure", epsilon=float(epsilon), delta=float(delta))


def sgd_epsilon(sigma: float, sample_rate: float, steps: int, delta: float) -> float:
    """The (epsilon at delta) of `steps` Poisson-subsampled Gaussian steps (RDP accountant)."""
    if steps <= 0:
        return 0.0
    from opacus.accountants.analysis import rdp as rdp_analysis

    rdp = rdp_analysis.compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=steps,
                                   orders=list(RDP_ORDERS))
    with warnings.catch_warnings():
        # Opacus warns when the optimum is at the edge of the order range; the bound is
        # still valid (just possibly not the tightest), so the warning is not actionable.
        warnings.simplefilter("ignore")
        eps, _ = rdp_analysis.get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=delta)
    return float(eps)


def calibrate_sigma(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier (within 1%) whose RDP epsilon is <= target_epsilon."""
    if not 0 < sample_rate <= 1:
        raise ValueError("sample rate must be in (0, 1]")
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be from 1 to {MAX_STEPS}")
    low, high = 0.0, 1.0
    while sgd_epsilon(high, sample_rate, steps, delta) > target_epsilon:
        low, high = high, high * 2.0
        if high > MAX_SIGMA:
            raise ValueError("the privacy target is too small for this many steps")
    while high - low > 0.005 * high:
        mid = (low + high) / 2.0
        if sgd_epsilon(mid, sample_rate, steps, delta) <= target_epsilon:
            high = mid
        else:
            low = mid
    # `high` is always a value that was checked to meet the target.
    return high


@dataclass(frozen=True)
class SgdPlan:
    """Public DP-SGD parameters, fixed before training (functions of the noisy count)."""

    noisy_units: int
    sample_rate: float
    expected_batch: float
    steps_per_epoch: int
    steps: int
    noise_multiplier: float
    split: EpsilonSplit

    def epsilon_after(self, step: int) -> float:
        """Epsilon spent by the job's release if it stopped after `step` steps."""
        return self.split.count_epsilon + sgd_epsilon(self.noise_multiplier, self.sample_rate,
                                                      step, self.split.delta)

    def to_dict(self) -> dict:
        return {"noisy_units": self.noisy_units, "sample_rate": self.sample_rate,
                "expected_batch": self.expected_batch, "steps_per_epoch": self.steps_per_epoch,
                "steps": self.steps, "noise_multiplier": self.noise_multiplier,
                "count_epsilon": self.split.count_epsilon, "sgd_epsilon": self.split.sgd_epsilon,
                "delta": self.split.delta}


def plan_sgd(noisy_units: int, batch_size: int, epochs: int, split: EpsilonSplit,
             rounds: int = 1) -> SgdPlan:
    """q = batch/N~, steps = epochs/q per round (times `rounds` for federated jobs)."""
    n = max(int(noisy_units), batch_size, 1)
    q = min(1.0, batch_size / n)
    steps_per_epoch = max(1, math.ceil(1.0 / q))
    steps = steps_per_epoch * epochs * rounds
    sigma = calibrate_sigma(split.sgd_epsilon, split.delta, q, steps)
    return SgdPlan(n, q, q * n, steps_per_epoch, steps, sigma, split)

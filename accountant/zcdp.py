"""zCDP <-> (epsilon, delta)-DP conversions, computed by OpenDP.

Why Gaussian datasets are accounted in zCDP
-------------------------------------------
A mechanism M is rho-zCDP (Bun & Steinke 2016) if for all neighbouring inputs x, x' and every
Renyi order alpha > 1,  D_alpha(M(x) || M(x')) <= rho * alpha.  The Gaussian mechanism with L2
sensitivity Delta and standard deviation sigma is rho-zCDP with rho = Delta^2 / (2 sigma^2);
OpenDP's `make_gaussian` privacy map returns exactly this rho (rounded up).

Composition: Renyi divergences of independent (or sequentially, adaptively chosen) mechanisms
add, so running a rho_1-zCDP mechanism and then a rho_2-zCDP mechanism is (rho_1 + rho_2)-zCDP.
Threshold mechanisms for key release are (delta, rho)-approximate zCDP and their deltas add
too. The ledger therefore only has to add rho's and delta's; nothing is converted per query.

Conversion (Canonne, Kamath & Steinke 2020, "The Discrete Gaussian for Differential Privacy",
Prop. 12 / Cor. 13), implemented by OpenDP's `make_zCDP_to_approxDP` (module `cks20`): a
rho-zCDP mechanism is (epsilon, delta)-DP for

    delta = inf_{alpha > 1} exp((alpha-1)(alpha*rho - epsilon)) / (alpha-1) * (1 - 1/alpha)^alpha

OpenDP evaluates this with conservative (outward) rounding and inverts it numerically for a
given delta (`PrivacyProfile.epsilon(delta)`). It is never worse than the classic
epsilon = rho + 2 sqrt(rho ln(1/delta)) (Bun & Steinke Prop. 1.3), which we only use as a
fallback bound when OpenDP's evaluation overflows for absurdly large rho.

Why k Gaussian queries cost about sqrt(k) and not k
--------------------------------------------------
k queries of rho each compose to k*rho, and the conversion gives roughly
epsilon(k) ~ k*rho + 2 sqrt(k*rho ln(1/delta)). For the small rho of useful queries the square
root term dominates, so the total epsilon grows like sqrt(k). Basic composition of the same
queries, each stated as (epsilon_1, delta_1)-DP, costs k*epsilon_1 (and needs delta split k
ways on top). `bench/accountant_composition.py` measures the difference.

Why each accounting is a valid *filter* under adaptive choice
-------------------------------------------------------------
Analysts choose the next query (and its epsilon) after seeing earlier answers, and they stop
when the budget runs out. Composition theorems for a fixed sequence of parameters do not cover
parameters that depend on earlier outputs; what is needed is a privacy *filter*: a stopping
rule that refuses the query that would cross the budget. Two filters are known to be valid:

* pure / approximate DP: the basic composition filter "continue while sum eps_i <= E and
  sum delta_i <= D" is an (E, D)-DP filter (Rogers, Roth, Ullman & Vadhan 2016, "Privacy
  Odometers and Filters: Pay-as-you-Go Composition").
* zCDP: the filter "continue while sum rho_i <= rho_max" (and sum delta_i <= D' for the
  approximate part) is rho_max-zCDP (delta D'-approximate) under fully adaptive choice
  (Whitehouse, Ramdas, Rogers & Wu 2023, "Fully-Adaptive Composition in Differential
  Privacy"; also Feldman & Zrnic 2021 for Renyi filters). Converting rho_max once with the
  bound above then gives the (E, D) guarantee of the whole interaction.

Why we do NOT take the min of the two accountings
-------------------------------------------------
For a fixed, non-adaptive sequence, both bounds hold at once, so the smaller one holds. A
filter that admits a query whenever *either* accounting still fits is a different stopping
rule: on some transcripts it continues on the strength of the pure accounting, on others on
the strength of the zCDP accounting. Privacy is a property of the distribution over all
transcripts, and neither filter theorem covers a rule that switches certificate per
transcript; we know of no theorem that makes it valid. So each dataset fixes one measure
(chosen by the owner before any query) and is filtered in that measure only.
"""
from __future__ import annotations

import math
from functools import lru_cache

import opendp.prelude as dp

dp.enable_features("contrib")

# Bisection stops when the feasible and infeasible rho are this close (relative). The answer
# is always the feasible end, so precision only costs budget, never privacy.
_REL_PRECISION = 1e-12


def _check_delta(delta: float) -> float:
    delta = float(delta)
    if not (0.0 < delta < 1.0):
        raise ValueError(f"delta must be in (0, 1) to convert zCDP to (epsilon, delta)-DP, "
                         f"got {delta!r}")
    return delta


def _gaussian_with_rho_at_least(rho: float):
    """A scalar Gaussian measurement whose OpenDP privacy map at sensitivity 1 is >= rho.

    OpenDP rounds its map up, but sigma = 1/sqrt(2 rho) is itself rounded in Python, so the
    map can land one ulp *below* rho. Shrinking sigma until map(1) >= rho keeps the
    conversion conservative: epsilon is monotone in rho.
    """
    sigma = 1.0 / math.sqrt(2.0 * rho)
    for _ in range(64):
        meas = dp.m.make_gaussian(dp.atom_domain(T=float, nan=False),
                                  dp.absolute_distance(T=float), scale=sigma)
        if meas.map(1.0) >= rho:
            return meas
        sigma = math.nextafter(sigma, 0.0)
    raise ArithmeticError(f"could not build a Gaussian measurement with rho >= {rho!r}")


def _classic_epsilon(rho: float, delta: float) -> float:
    """Bun & Steinke 2016 Prop. 1.3; looser than CKS20, valid for every rho."""
    return rho + 2.0 * math.sqrt(rho * math.log(1.0 / delta))


@lru_cache(maxsize=4096)
def epsilon_for_rho(rho: float, delta: float) -> float:
    """The epsilon OpenDP certifies for a rho-zCDP mechanism at this delta (conservative)."""
    rho = float(rho)
    delta = _check_delta(delta)
    if not (rho >= 0.0 and math.isfinite(rho)):
        raise ValueError(f"rho must be a non-negative finite number, got {rho!r}")
    if rho == 0.0:
        return 0.0
    try:
        meas = dp.c.make_zCDP_to_approxDP(_gaussian_with_rho_at_least(rho))
        return float(meas.map(1.0).epsilon(delta))
    except dp.OpenDPException:
        # Overflow inside OpenDP for huge rho: the classic bound is an upper bound of the
        # CKS20 epsilon, so using it is conservative.
        return _classic_epsilon(rho, delta)


def _fits(rho: float, epsilon: float, delta: float) -> bool:
    return epsilon_for_rho(rho, delta) <= epsilon


@lru_cache(maxsize=4096)
def rho_for_epsilon(epsilon: float, delta: float) -> float:
    """The largest rho (to 1e-12 relative) whose OpenDP conversion is (epsilon, delta)-DP.

    Bisection over the monotone conversion. Only rho values actually checked with OpenDP are
    ever returned, so the result is conservative: epsilon_for_rho(result, delta) <= epsilon.
    Cached on the exact float inputs (no rounding of the key, so no rounding risk).
    """
    epsilon = float(epsilon)
    delta = _check_delta(delta)
    if math.isnan(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon must be non-negative, got {epsilon!r}")
    if epsilon == 0.0:
        return 0.0
    if math.isinf(epsilon):
        raise ValueError("epsilon must be finite")
    # Start from the classic closed form, which is feasible for CKS20 (a tighter bound).
    log_term = math.log(1.0 / delta)
    lo = (math.sqrt(log_term + epsilon) - math.sqrt(log_term)) ** 2
    if lo <= 0.0 or not _fits(lo, epsilon, delta):
        lo = 0.0
    hi = max(lo * 2.0, epsilon, 1e-300)
    while _fits(hi, epsilon, delta):
        lo, hi = hi, hi * 2.0
        if math.isinf(hi):
            raise ArithmeticError("rho_for_epsilon diverged")
    for _ in range(200):  # ~40 needed from the closed-form start; the cap bounds odd inputs
        if hi - lo <= _REL_PRECISION * hi:
            break
        mid = lo + (hi - lo) / 2.0
        if mid <= lo or mid >= hi:
            break
        if _fits(mid, epsilon, delta):
            lo = mid
        else:
            hi = mid
    return lo

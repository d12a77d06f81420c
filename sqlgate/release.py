"""Calibrate and draw the noise of a plan, with OpenDP only (privacy rule 2).

Every measure is a vector of integers (fixed-point sums, counts). One OpenDP measurement is
built per measure and applied to the whole vector in one call: integer Laplace for pure DP,
integer (discrete) Gaussian for zCDP. Group keys found in the data (no public key set) are
released only through OpenDP's threshold mechanisms, which cost delta.

The budget a query asks for is split evenly over its measures. Calibration computes the
analytic scale and then checks it with the measurement's own privacy map, so the cost we
charge is what OpenDP certifies, not what we hope.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Callable, Sequence

import numpy as np
import opendp.prelude as dp

from accountant.cost import PrivacyCost
from rewriter.plan import DPPlan, Measure
from sqlgate.errors import InvalidParameter, PolicyRefused

CellRunner = Callable[[Sequence[Callable[[], float]]], Sequence[float]]
"""Runs independent zero-argument tasks (possibly concurrently); their results in order."""

dp.enable_features("contrib")

_I64_MAX = 2**63 - 1
# Noisy sums stay well inside i64 after noise, so the clamp below is the only overflow guard.
_SUM_LIMIT = 2**62
_LAPLACE_CI95 = math.log(20.0)  # P(|Laplace(b)| > b ln 20) = 0.05
_GAUSS_CI95 = 1.959963984540054


@dataclass(frozen=True)
class NoiseSpec:
    measure: str
    mechanism: str  # laplace | gaussian
    scale: float  # in the measure's integer units
    ci95: float  # 95% half-width in the measure's integer units


@dataclass(frozen=True)
class ThresholdSpec:
    measure: str
    threshold: int
    delta: float


@dataclass(frozen=True)
class QuantileSpec:
    measure: str
    scale: float
    epsilon_per_group: float


@dataclass(frozen=True)
class ReleasePlan:
    cost: PrivacyCost
    noise: dict[str, NoiseSpec]
    threshold: ThresholdSpec | None
    mechanism: str
    quantiles: dict[str, QuantileSpec] = field(default_factory=dict)

    def ci95(self, measure: Measure) -> float:
        return self.noise[measure.name].ci95 / measure.scale_factor


def calibrate(plan: DPPlan, *, epsilon: float, delta: float, mechanism: str,
              rho_for_epsilon) -> ReleasePlan:
    """Scales for every measure so the whole query is (epsilon, delta)-DP.

    `delta` is only spent where needed: by the threshold for keys found in the data, and
    (zCDP) by the conversion that defines what `epsilon` means for a Gaussian query.
    """
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon > 0):
        raise InvalidParameter("epsilon must be a positive finite number")
    if epsilon > 100:
        raise InvalidParameter("epsilon above 100 gives no meaningful privacy; ask for less")
    k = len(plan.measures) + len(plan.quantiles)
    thresholded = plan.keys.mode == "threshold"
    if thresholded and delta <= 0:
        raise PolicyRefused("grouping by columns without a public key set needs a threshold "
                            "release, which needs delta > 0; the dataset allows delta = 0")
    noise: dict[str, NoiseSpec] = {}
    threshold = None
    if mechanism == "laplace":
        per_measure = epsilon / k
        for m in plan.measures:
            noise[m.name] = _laplace(m, per_measure)
        # A unit touches at most groups_per_unit groups: basic composition over them.
        quantiles = {q.name: _quantile(q, per_measure / q.groups_per_unit) for q in plan.quantiles}
        if thresholded:
            threshold = _laplace_threshold(plan.measure(plan.keys.threshold_measure),
                                           noise[plan.keys.threshold_measure].scale, delta)
        cost = PrivacyCost("pure", epsilon=epsilon, delta=threshold.delta if threshold else 0.0)
    elif mechanism == "gaussian":
        if delta <= 0:
            raise PolicyRefused("Gaussian noise needs delta > 0; the dataset allows delta = 0")
        conversion_delta = delta / 2 if thresholded else delta
        rho = rho_for_epsilon(epsilon, conversion_delta)
        per_measure = rho / k
        for m in plan.measures:
            noise[m.name] = _gaussian(m, per_measure)
        # eps-DP is eps^2/2-zCDP; a unit's groups_per_unit groups compose their rho.
        quantiles = {q.name: _quantile(q, math.sqrt(2 * per_measure / q.groups_per_unit))
                     for q in plan.quantiles}
        if thresholded:
            threshold = _gaussian_threshold(plan.measure(plan.keys.threshold_measure),
                                            noise[plan.keys.threshold_measure].scale, delta / 2)
        cost = PrivacyCost("zcdp", epsilon=epsilon, delta=threshold.delta if threshold else 0.0,
                           rho=rho)
    else:
        raise InvalidParameter(f"unknown mechanism {mechanism!r}")
    return ReleasePlan(cost=cost, noise=noise, threshold=threshold, mechanism=mechanism,
                       quantiles=quantiles)


# ---------------------------------------------------------------- calibration


# Measurements are immutable: build each (scale) once, not on every query (~0.5 ms each).
@lru_cache(maxsize=1024)
def _vector_laplace(scale: float):
    return dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T="i64")),
                             dp.l1_distance(T="i64"), scale=scale)


@lru_cache(maxsize=1024)
def _vector_gaussian(scale: float):
    return dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T="i64")),
                              dp.l2_distance(T="f64"), scale=scale)


@lru_cache(maxsize=4096)
def _calibrated_laplace_scale(l1: int, epsilon: float) -> float:
    scale = l1 / epsilon
    while _vector_laplace(scale).map(l1) > epsilon:
        scale *= 1 + 1e-9
    return scale


@lru_cache(maxsize=4096)
def _calibrated_gaussian_scale(l2: float, rho: float) -> float:
    scale = l2 / math.sqrt(2 * rho)
    while _vector_gaussian(scale).map(l2) > rho:
        scale *= 1 + 1e-9
    return scale


# A measure is never released without noise: a planned sensitivity below one integer unit
# (e.g. bounds [0, 0], or 1e-300 in fixed point) is calibrated as one unit. Such a measure
# cannot move, so this costs nothing that matters, but an error in a zero row bound (as
# Python's round() once gave at exact halves, where the engine rounded up) then still meets
# noise of the engine's scale instead of none.
_MIN_SENSITIVITY = 1


def _laplace(m: Measure, epsilon: float) -> NoiseSpec:
    l1 = max(_MIN_SENSITIVITY, int(m.sensitivity.l1))
    scale = _calibrated_laplace_scale(l1, float(epsilon))
    return NoiseSpec(m.name, "laplace", scale, scale * _LAPLACE_CI95)


def _gaussian(m: Measure, rho: float) -> NoiseSpec:
    l2 = max(float(_MIN_SENSITIVITY), float(m.sensitivity.l2))
    scale = _calibrated_gaussian_scale(l2, float(rho))
    return NoiseSpec(m.name, "gaussian", scale, scale * _GAUSS_CI95)


def _threshold_domain():
    return dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T="i64"))


# Built once per (scale, threshold), like the vector measurements (~1.5 ms each; TPC-H q08
# built one on every query). The keys still go to one OpenDP call over the whole hashmap.
@lru_cache(maxsize=1024)
def _laplace_threshold_measurement(scale: float, threshold: int):
    return dp.m.make_laplace_threshold(_threshold_domain(),
                                       dp.l01inf_distance(dp.absolute_distance(T="i64")),
                                       scale=scale, threshold=threshold)


@lru_cache(maxsize=1024)
def _gaussian_threshold_measurement(scale: float, threshold: int):
    return dp.m.make_gaussian_threshold(_threshold_domain(),
                                        dp.l02inf_distance(dp.absolute_distance(T="i64")),
                                        scale=scale, threshold=threshold)


def _threshold_d_in(m: Measure) -> tuple[int, int, int]:
    s = m.sensitivity
    # The middle entry is an upper bound on the L1 (Laplace) / L2 (Gaussian) norm; OpenDP
    # tightens the L2 one with sqrt(l0) * linf itself.
    return (int(s.l0), int(s.l1), int(s.linf))


@lru_cache(maxsize=1024)
def _search_threshold(kind: str, d_in: tuple[int, int, int], scale: float, delta: float) -> ThresholdSpec:
    build = _laplace_threshold_measurement if kind == "laplace" else _gaussian_threshold_measurement
    low = max(1, d_in[2])
    high = low
    while build(scale, high).map(d_in)[1] > delta:
        high *= 2
        if high > 2**52:
            raise PolicyRefused("no threshold reaches the requested delta")
    while low < high:
        middle = (low + high) // 2
        if build(scale, middle).map(d_in)[1] <= delta:
            high = middle
        else:
            low = middle + 1
    return ThresholdSpec("", high, build(scale, high).map(d_in)[1])


def _laplace_threshold(m: Measure, scale: float, delta: float) -> ThresholdSpec:
    spec = _search_threshold("laplace", _threshold_d_in(m), scale, delta)
    return ThresholdSpec(m.name, spec.threshold, spec.delta)


def _gaussian_threshold(m: Measure, scale: float, delta: float) -> ThresholdSpec:
    spec = _search_threshold("gaussian", _threshold_d_in(m), scale, delta)
    return ThresholdSpec(m.name, spec.threshold, spec.delta)


# Built once per quantile (candidates, alpha) and per scale: scoring a plan's quantiles used
# to rebuild the scorer and noisy-max chain on every query (~1-3 ms each).
@lru_cache(maxsize=256)
def _quantile_scorer(q):
    domain = dp.vector_domain(dp.atom_domain(T=float, nan=False))
    return dp.t.make_quantile_score_candidates(domain, dp.symmetric_distance(),
                                               candidates=list(q.candidates), alpha=q.alpha)


@lru_cache(maxsize=256)
def _noisy_max(q, scale: float):
    scorer = _quantile_scorer(q)
    return dp.m.make_noisy_max(scorer.output_domain, scorer.output_metric,
                               dp.max_divergence(), scale=scale, negate=True)


@lru_cache(maxsize=256)
def _quantile_measurement(q, scale: float):
    """OpenDP's whole quantile release (scorer >> noisy max): its map calibrates the scale."""
    return _quantile_scorer(q) >> _noisy_max(q, scale)


@lru_cache(maxsize=1024)
def _quantile(q, epsilon_per_group: float) -> QuantileSpec:
    # The privacy map is linear in 1/scale: read it at scale 1, then verify.
    unit_cost = _quantile_measurement(q, 1.0).map(q.rows_per_unit)
    scale = unit_cost / epsilon_per_group
    while _quantile_measurement(q, scale).map(q.rows_per_unit) > epsilon_per_group:
        scale *= 1 + 1e-9
    return QuantileSpec(q.name, scale, epsilon_per_group)


@dataclass(frozen=True)
class _ScoreWeights:
    """OpenDP's quantile score of candidate c on values x is
    |below * #(x < c) - above * #(x > c)|, with below = alpha_den - alpha_num and
    above = alpha_num its integer fraction of alpha (counts are capped at size_limit,
    far above any vector that gets here)."""

    candidates: np.ndarray
    below: int
    above: int


# Large enough to cover ties, every candidate and both sides of the bounds.
_PROBE_STEPS = 7


@lru_cache(maxsize=256)
def _score_weights(q) -> _ScoreWeights | None:
    """The weights of OpenDP's scorer for `q`, read from the scorer itself (one value below
    all candidates scores `below`, one above scores `above`), then checked against it on a
    probe vector with ties and out-of-range values. None (use OpenDP's scorer on the full
    vector) if anything disagrees, e.g. a future OpenDP with another score."""
    scorer = _quantile_scorer(q)
    candidates = np.array(q.candidates, dtype=np.float64)
    if len(candidates) == 0 or not np.all(np.isfinite(candidates)):
        return None
    first, last = float(candidates[0]), float(candidates[-1])
    below_all, above_all = np.nextafter(first, -np.inf), np.nextafter(last, np.inf)
    if not (math.isfinite(below_all) and math.isfinite(above_all)):
        return None
    weights = _ScoreWeights(candidates, int(scorer(np.array([below_all]))[0]),
                            int(scorer(np.array([above_all]))[0]))
    if max(weights.below, weights.above) > _MAX_WEIGHT:
        return None  # scores could leave int64 (see _SAFE_SCORE_ROWS)
    middles = candidates[:-1] / 2 + candidates[1:] / 2  # no overflow near +-1.8e308
    probe = np.concatenate([candidates[::_PROBE_STEPS], candidates[::_PROBE_STEPS * 3],
                            middles[::_PROBE_STEPS], [below_all, above_all, above_all],
                            candidates[-1:]])
    for values in (probe, probe[: len(probe) // 3], np.empty(0)):
        if _scores(weights, values).tolist() != list(scorer(np.array(values))):
            return None
    return weights


def _scores(weights: _ScoreWeights, values: np.ndarray) -> np.ndarray:
    """OpenDP's scores from two binary searches per candidate into the sorted values:
    sorting 150k values in numpy takes ~0.5 ms where OpenDP's per-value scoring took ~9."""
    ordered = np.sort(values)
    n = len(ordered)
    less = np.searchsorted(ordered, weights.candidates, side="left")
    greater = n - np.searchsorted(ordered, weights.candidates, side="right")
    return np.abs(weights.below * less.astype(np.int64)
                  - weights.above * greater.astype(np.int64)).astype(np.uint64)


def noisy_quantiles(q, spec: QuantileSpec, values_per_cell: list[list[float]],
                    run_cells: CellRunner | None = None) -> list[float]:
    """One OpenDP quantile per cell; empty cells still get a (random) candidate.

    The selection (noisy max, the only randomness) is always OpenDP's, with the scale its
    whole scorer >> noisy-max chain was calibrated with. The scores are computed here, equal
    to OpenDP's scorer (whose weights `_score_weights` reads and checks), because its
    per-value scoring dominated quantile queries; score vectors are a deterministic
    function of the values, so the released distribution is exactly OpenDP's. Vectors this
    path cannot take (NaN, sizes near the scorer's caps) go through OpenDP's scorer.

    `run_cells(tasks)` (optional) runs the cells' independent releases concurrently and
    returns their results in order: OpenDP's noisy max over 1024 candidates takes ~1.6 ms
    and runs without the GIL, as does numpy's sort, so on a grouped quantile the cells'
    releases overlap. Each cell is still one OpenDP draw, whichever thread makes it.

    Values go to OpenDP as float64 arrays: its numpy path hands the buffer over in one
    copy, where a list is checked and converted element by element (10x slower). np.array
    copies, because OpenDP needs a writable buffer (pandas hands out read-only ones)."""
    weights = _score_weights(q)
    select = _noisy_max(q, spec.scale)

    def release(values) -> float:
        array = np.array(values, dtype=np.float64)
        if weights is not None and len(array) < _SAFE_SCORE_ROWS \
                and not np.isnan(array).any():
            index = select(_scores(weights, array))
        else:
            index = _quantile_measurement(q, spec.scale)(array)
        return q.candidates[index]

    tasks = [partial(release, values) for values in values_per_cell]
    if run_cells is None or len(tasks) < 2:
        return [task() for task in tasks]
    return list(run_cells(tasks))


# With weights up to 2**20 (OpenDP's alpha denominator is at most 10_000) and fewer than
# 2**40 values, a score fits in int64 and OpenDP's count cap (u64::MAX / denominator) is
# never reached, so neither the cap nor an overflow can make the two scorers differ.
_MAX_WEIGHT = 2**20
_SAFE_SCORE_ROWS = 2**40


# ---------------------------------------------------------------- drawing noise


def _clamp_i64(value) -> int:
    if value is None:
        return 0
    value = int(value)
    return max(-_SUM_LIMIT, min(_SUM_LIMIT, value))


def noisy_vector(spec: NoiseSpec, values: list[int]) -> list[int]:
    if not values:
        return []
    clean = [_clamp_i64(v) for v in values]
    measurement = _vector_laplace(spec.scale) if spec.mechanism == "laplace" else _vector_gaussian(spec.scale)
    return list(measurement(clean))


def add_drawn(values: list, drawn: list[int]) -> list[int]:
    """x + Z for noise Z drawn ahead by `noisy_vector` on zeros (sqlgate/noise_ahead.py): what
    OpenDP's integer measurement returns for x with those draws (inputs clamped as
    noisy_vector clamps them, the sum saturating at the i64 limits as OpenDP's does)."""
    if len(values) != len(drawn):
        raise ValueError("noise drawn for another number of cells")
    return [max(-_I64_MAX - 1, min(_I64_MAX, _clamp_i64(v) + z)) for v, z in zip(values, drawn)]


# Keys per OpenDP threshold call when the calls run side by side: its exact sampler takes
# ~6-9 us a key (1000 threshold keys: ~9 ms, more than the raw query), with the GIL released.
_THRESHOLD_CHUNK = 256


def threshold_keys(release: ReleasePlan, counts: dict[str, int],
                   run_cells: CellRunner | None = None) -> dict[str, int]:
    """Noisy counts of the keys that pass the threshold (all others are dropped).

    With `run_cells`, many keys are split into disjoint parts, each released by the same
    OpenDP threshold measurement, side by side. That measurement treats keys independently
    (each key: its own noise draw, kept if the noisy count reaches the threshold), so the
    union of the parts' releases has exactly the distribution of one call on all keys."""
    spec = release.threshold
    scale = release.noise[spec.measure].scale
    if release.mechanism == "laplace":
        measurement = _laplace_threshold_measurement(scale, spec.threshold)
    else:
        measurement = _gaussian_threshold_measurement(scale, spec.threshold)
    if not counts:
        return {}
    clean = {key: _clamp_i64(v) for key, v in counts.items()}
    parts = _parts(clean, _THRESHOLD_CHUNK) if run_cells is not None else [clean]
    if len(parts) == 1:
        return dict(measurement(clean))
    kept = [item for released in run_cells([partial(measurement, part) for part in parts])
            for item in released.items()]
    # OpenDP shuffles its output so that it does not leak the input's order; a union of
    # parts in order would (which part a key came from), so the union is shuffled too.
    random.SystemRandom().shuffle(kept)
    return dict(kept)


def _parts(counts: dict, size: int) -> list[dict]:
    items = list(counts.items())
    return [dict(items[i:i + size]) for i in range(0, len(items), size)]

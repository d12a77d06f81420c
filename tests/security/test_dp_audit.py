"""Statistical DP audit: neighbouring datasets (one unit added), many noisy releases, and an
empirical epsilon lower bound from Clopper-Pearson intervals on threshold events.

A correct mechanism never shows a lower bound above its claimed epsilon; the audit is also
shown to catch a deliberately broken one (contributions not bounded per unit). Only the
noise is re-drawn per sample: the bounded SQL runs once per dataset, which is exactly the
mechanism (deterministic bounded aggregate + fresh OpenDP noise).
"""
import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta

from accountant.zcdp import rho_for_epsilon
from rewriter import plan_query
from sqlgate import release
from sqlgate.metadata import parse_dataset

SAMPLES = 20_000
CONFIDENCE = 0.999


def metadata(name, mechanism="laplace", rows_per_group=1):
    return parse_dataset({
        "dataset": name, "budget": {"epsilon": 10, "delta": 1e-5},
        "query": {"epsilon": 1.0, "delta": 1e-6, "mechanism": mechanism},
        "tables": {"t": {"privacy_unit": "uid", "max_rows_per_group": rows_per_group, "columns": {
            "uid": "int", "x": {"type": "int", "lower": 0, "upper": 100, "nullable": False}}}}})


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory):
    """d0: 40 units; d1: the same plus one unit with 5 rows of an extreme value."""
    from sqlgate.gateway import Gateway
    gw = Gateway(tmp_path_factory.mktemp("audit"))
    base = pd.DataFrame({"uid": np.arange(40), "x": np.arange(40) % 50})
    extra = pd.DataFrame({"uid": [999] * 5, "x": [10**6] * 5})
    for mechanism in ("laplace", "gaussian"):
        gw.add_dataset(metadata(f"d0_{mechanism}", mechanism), {"t": base})
        gw.add_dataset(metadata(f"d1_{mechanism}", mechanism), {"t": pd.concat([base, extra])})
    yield gw
    gw.close()


def _plan(gw, dataset, sql):
    return plan_query(sql, lambda node: (gw.dataset(dataset), gw.dataset(dataset).table(node.name)))


def _raw(gw, plan):
    return gw.executor.run(plan.bounded_sql).rows[0]


def clopper_pearson(successes, trials, alpha):
    low = 0.0 if successes == 0 else beta.ppf(alpha / 2, successes, trials - successes + 1)
    high = 1.0 if successes == trials else beta.ppf(1 - alpha / 2, successes + 1, trials - successes)
    return low, high


def epsilon_lower_bound(a, b, delta=0.0):
    """Largest ln((P[A in S] - delta) / P[B in S]) certified at CONFIDENCE over events S."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    thresholds = np.unique(np.quantile(np.concatenate([a, b]), np.linspace(0.05, 0.95, 19)))
    alpha = (1 - CONFIDENCE) / (2 * len(thresholds))  # Bonferroni over events and directions
    best = 0.0
    for t in thresholds:
        for first, second in ((a, b), (b, a)):
            p_low, _ = clopper_pearson(int((first > t).sum()), len(first), alpha)
            _, q_high = clopper_pearson(int((second > t).sum()), len(second), alpha)
            if p_low - delta > 0 and q_high > 0:
                best = max(best, math.log((p_low - delta) / q_high))
    return best


def draw(rp, measure, value, n=SAMPLES):
    return release.noisy_vector(rp.noise[measure.name], [int(value)] * n)


@pytest.mark.parametrize("sql", ["SELECT COUNT(*) FROM t", "SELECT SUM(x) FROM t"])
def test_laplace_mechanisms_stay_within_epsilon(neighbours, sql):
    epsilon = 1.0
    samples = []
    for name in ("d0_laplace", "d1_laplace"):
        plan = _plan(neighbours, name, sql)
        rp = release.calibrate(plan, epsilon=epsilon, delta=1e-6, mechanism="laplace",
                               rho_for_epsilon=rho_for_epsilon)
        samples.append(draw(rp, plan.measures[0], _raw(neighbours, plan)[0]))
    bound = epsilon_lower_bound(*samples)
    assert bound <= epsilon
    assert bound > 0.5 * epsilon  # the audit has power: it sees most of the real loss


def test_gaussian_mechanism_stays_within_epsilon_delta(neighbours):
    epsilon, delta = 1.0, 1e-6
    samples = []
    for name in ("d0_gaussian", "d1_gaussian"):
        plan = _plan(neighbours, name, "SELECT COUNT(*) FROM t")
        rp = release.calibrate(plan, epsilon=epsilon, delta=delta, mechanism="gaussian",
                               rho_for_epsilon=rho_for_epsilon)
        samples.append(draw(rp, plan.measures[0], _raw(neighbours, plan)[0]))
    assert epsilon_lower_bound(*samples, delta=delta) <= epsilon


def test_quantile_mechanism_stays_within_epsilon(neighbours):
    epsilon = 1.0
    outputs = []
    for name in ("d0_laplace", "d1_laplace"):
        plan = _plan(neighbours, name, "SELECT MEDIAN(x) FROM t")
        rp = release.calibrate(plan, epsilon=epsilon, delta=1e-6, mechanism="laplace",
                               rho_for_epsilon=rho_for_epsilon)
        values = [row[0] for row in neighbours.executor.run(plan.quantile_sql).rows]
        q = plan.quantiles[0]
        outputs.append(release.noisy_quantiles(q, rp.quantiles[q.name], [values] * 4000))
    assert epsilon_lower_bound(*outputs) <= epsilon


def test_audit_catches_a_mechanism_without_per_unit_bounding(neighbours):
    """Noise calibrated for one row per unit, but the new unit's 5 rows all counted."""
    epsilon = 1.0
    plan = _plan(neighbours, "d0_laplace", "SELECT COUNT(*) FROM t")
    rp = release.calibrate(plan, epsilon=epsilon, delta=1e-6, mechanism="laplace",
                           rho_for_epsilon=rho_for_epsilon)
    unbounded = [neighbours.executor.run(f'SELECT COUNT(*) FROM "{name}"."t"').rows[0][0]
                 for name in ("d0_laplace", "d1_laplace")]
    assert unbounded[1] - unbounded[0] == 5
    samples = [draw(rp, plan.measures[0], value) for value in unbounded]
    assert epsilon_lower_bound(*samples) > 2 * epsilon


# ---------------------------------------------------------------- more mechanism families


def _grouped_metadata(name, mechanism):
    return parse_dataset({
        "dataset": name, "budget": {"epsilon": 10, "delta": 0.1},
        "query": {"epsilon": 1.0, "delta": 0.01, "mechanism": mechanism},
        "tables": {"t": {"privacy_unit": "uid", "max_groups_per_unit": 2, "columns": {
            "uid": "int", "g": "string",
            "f": {"type": "float", "lower": -1.5, "upper": 2.25}}}}})


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """d0: 40 units in group 'common'; d1: plus one unit in 'common' and alone in 'rare',
    with extreme values."""
    from sqlgate.gateway import Gateway
    gw = Gateway(tmp_path_factory.mktemp("audit-grouped"))
    base = pd.DataFrame({"uid": np.arange(40), "g": ["common"] * 40,
                         "f": np.linspace(-1.5, 2.25, 40)})
    extra = pd.DataFrame({"uid": [999, 999], "g": ["rare", "common"], "f": [1e9, 1e9]})
    for mechanism in ("laplace", "gaussian"):
        gw.add_dataset(_grouped_metadata(f"g0_{mechanism}", mechanism), {"t": base})
        gw.add_dataset(_grouped_metadata(f"g1_{mechanism}", mechanism),
                       {"t": pd.concat([base, extra])})
    yield gw
    gw.close()


def _release(gw, dataset, sql, mechanism, epsilon=1.0, delta=0.01):
    plan = _plan(gw, dataset, sql)
    rp = release.calibrate(plan, epsilon=epsilon, delta=delta, mechanism=mechanism,
                           rho_for_epsilon=rho_for_epsilon)
    return plan, rp


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_fixed_point_float_sum_stays_within_epsilon(grouped, mechanism):
    """A float column summed as fixed-point integers: the scaling keeps the sensitivity."""
    epsilon, delta = 1.0, (1e-6 if mechanism == "gaussian" else 0.0)
    samples = []
    for name in (f"g0_{mechanism}", f"g1_{mechanism}"):
        plan, rp = _release(grouped, name, "SELECT SUM(f) FROM t", mechanism, epsilon,
                            delta or 1e-6)
        assert plan.measures[0].fixed_point_bits > 0
        samples.append(draw(rp, plan.measures[0], _raw(grouped, plan)[0]))
    assert epsilon_lower_bound(*samples, delta=delta) <= epsilon


def _threshold_draws(rp, counts, n):
    """n draws of the threshold mechanism exactly as release.threshold_keys builds it (the
    measurement is built once here only to keep the audit fast)."""
    spec, scale = rp.threshold, rp.noise[rp.threshold.measure].scale
    build = (release._laplace_threshold_measurement if rp.mechanism == "laplace"
             else release._gaussian_threshold_measurement)
    measurement = build(scale, spec.threshold)
    assert release.threshold_keys(rp, counts).keys() <= counts.keys()
    released, values = 0, []
    for _ in range(n):
        out = measurement(counts)
        released += "rare" in out
        values.append(out.get("common", -10**9))
    return released, np.asarray(values, float)


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_threshold_key_release_stays_within_epsilon_delta(grouped, mechanism):
    """Keys found in the data: a key only the added unit has may appear with probability at
    most delta (it never appears without that unit); the counts of shared keys are DP."""
    sql = "SELECT g, COUNT(*) FROM t GROUP BY g"
    trials = 4000
    plan0, rp = _release(grouped, f"g0_{mechanism}", sql, mechanism)
    counts = [{str(row[0]): row[1] for row in grouped.executor.run(p.bounded_sql).rows}
              for p in (plan0, _plan(grouped, f"g1_{mechanism}", sql))]
    assert counts[0] == {"common": 40} and counts[1] == {"common": 41, "rare": 1}
    delta = rp.threshold.delta
    draws = [_threshold_draws(rp, c, trials) for c in counts]
    assert draws[0][0] == 0  # a key absent from the data is never released
    low, _ = clopper_pearson(draws[1][0], trials, 1 - CONFIDENCE)
    assert low <= delta
    epsilon = rp.cost.epsilon
    assert epsilon_lower_bound(draws[0][1], draws[1][1], delta=delta) <= epsilon


def test_audit_catches_a_threshold_that_ignores_delta(grouped):
    """A threshold of 1 releases the lone unit's key about half the time: far above delta."""
    import dataclasses
    sql = "SELECT g, COUNT(*) FROM t GROUP BY g"
    _, rp = _release(grouped, "g1_laplace", sql, "laplace")
    broken = dataclasses.replace(rp, threshold=dataclasses.replace(rp.threshold, threshold=1))
    trials = 2000
    released, _ = _threshold_draws(broken, {"common": 41, "rare": 1}, trials)
    low, _ = clopper_pearson(released, trials, 1 - CONFIDENCE)
    assert low > 10 * rp.threshold.delta

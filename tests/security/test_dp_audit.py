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

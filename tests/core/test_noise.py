"""Noise scale of every aggregate against its sensitivity, and the noise actually drawn."""
import math

import numpy as np
import pytest

from rewriter import plan_query
from sqlgate import release
from sqlgate.metadata import parse_dataset, dataset_to_dict

from tests.core.conftest import people_metadata

LN20 = math.log(20)


def plan(sql, meta):
    return plan_query(sql, lambda node: (meta, meta.table(node.name)))


def fake_rho(eps, delta):
    # Only used to check Gaussian calibration against a given rho.
    return 0.05


@pytest.mark.parametrize("sql,expected", [
    # (kind, column) -> expected L1 sensitivity in integer units, for L0=2, Linf rows=3
    ("SELECT region, COUNT(*) FROM people GROUP BY region", {("count", None): 2 * 3}),
    ("SELECT region, COUNT(city) FROM people GROUP BY region", {("count_col", "people.city"): 2 * 3}),
    ("SELECT region, COUNT(DISTINCT pid) FROM people GROUP BY region", {("units", None): 2 * 1}),
    ("SELECT region, SUM(age) FROM people GROUP BY region", {("sum", "people.age"): 2 * 3 * 100}),
    ("SELECT region, SUM(score) FROM people GROUP BY region", {("sum", "people.score"): 2 * 3 * 10 * 2**16}),
    ("SELECT region, AVG(age) FROM people GROUP BY region",
     {("sum", "people.age"): 2 * 3 * 100, ("count", None): 2 * 3}),
    ("SELECT region, VARIANCE(age) FROM people GROUP BY region",
     {("sum", "people.age"): 600, ("count", None): 6, ("sum_sq", "people.age"): 2 * 3 * 50 * 50}),
])
def test_laplace_scale_is_sensitivity_over_epsilon_share(sql, expected):
    meta = people_metadata(max_groups_per_unit=2, max_rows_per_group=3)
    p = plan(sql, meta)
    got = {(m.kind, m.column): m for m in p.measures}
    assert set(got) == set(expected)
    epsilon = 0.8
    rp = release.calibrate(p, epsilon=epsilon, delta=1e-7, mechanism="laplace",
                           rho_for_epsilon=fake_rho)
    share = epsilon / len(p.measures)
    for key, l1 in expected.items():
        m = got[key]
        assert m.sensitivity.l1 == l1
        scale = rp.noise[m.name].scale
        assert scale == pytest.approx(l1 / share, rel=1e-6)
        assert scale >= l1 / share  # never below the analytic scale
        assert rp.ci95(m) == pytest.approx(scale * LN20 / m.scale_factor, rel=1e-9)
    assert rp.cost.epsilon == epsilon and rp.cost.delta == 0


def test_gaussian_scale_uses_l2_sensitivity():
    meta = people_metadata(max_groups_per_unit=4, max_rows_per_group=1)
    p = plan("SELECT region, COUNT(*), SUM(age) FROM people GROUP BY region", meta)
    rp = release.calibrate(p, epsilon=1.0, delta=1e-6, mechanism="gaussian",
                           rho_for_epsilon=fake_rho)
    per_rho = 0.05 / 2
    for m in p.measures:
        assert m.sensitivity.l2 == pytest.approx(2 * m.sensitivity.linf)  # sqrt(L0) * Linf
        assert rp.noise[m.name].scale == pytest.approx(m.sensitivity.l2 / math.sqrt(2 * per_rho), rel=1e-6)
    assert rp.cost.measure == "zcdp" and rp.cost.rho == pytest.approx(0.05)


def test_drawn_noise_matches_the_calibrated_scale():
    spec = release.NoiseSpec("m0", "laplace", 20.0, 20.0 * LN20)
    draws = np.array(release.noisy_vector(spec, [0] * 20000), dtype=float)
    assert abs(draws.mean()) < 1.0
    assert draws.std() == pytest.approx(math.sqrt(2) * 20.0, rel=0.05)
    assert np.mean(np.abs(draws) <= spec.ci95) == pytest.approx(0.95, abs=0.01)
    gauss = release.NoiseSpec("m0", "gaussian", 15.0, 15.0 * 1.96)
    draws = np.array(release.noisy_vector(gauss, [0] * 20000), dtype=float)
    assert draws.std() == pytest.approx(15.0, rel=0.05)


def test_end_to_end_noise_has_the_planned_spread(tmp_path):
    from sqlgate.gateway import Gateway
    from tests.core.conftest import people_frame
    with Gateway(tmp_path / "d") as gw:
        gw.add_dataset(people_metadata(), {"people": people_frame(500)})
        answers = [gw.query("SELECT COUNT(*) FROM people", analyst=f"a{i}", epsilon=0.5).rows[0][0]
                   for i in range(600)]  # 200 draws failed ~1 run in 10 (Laplace tails)
    answers = np.array(answers, dtype=float)
    expected_std = math.sqrt(2) * (1 / 0.5)
    assert answers.std() == pytest.approx(expected_std, rel=0.2)
    assert abs(answers.mean() - 500) < 0.6
    assert len(set(answers)) > 5  # fresh draws per analyst, not a constant


def test_threshold_is_calibrated_to_the_query_delta():
    meta = people_metadata(max_groups_per_unit=3)
    p = plan("SELECT city, COUNT(DISTINCT pid) FROM people GROUP BY city", meta)
    rp = release.calibrate(p, epsilon=1.0, delta=1e-7, mechanism="laplace",
                           rho_for_epsilon=fake_rho)
    assert 0 < rp.threshold.delta <= 1e-7
    # a tighter delta needs a higher threshold
    tighter = release.calibrate(p, epsilon=1.0, delta=1e-9, mechanism="laplace",
                                rho_for_epsilon=fake_rho)
    assert tighter.threshold.threshold > rp.threshold.threshold
    assert rp.cost.delta == rp.threshold.delta

import math

import opendp.prelude as dp
import pytest

from accountant.zcdp import epsilon_for_rho, rho_for_epsilon

dp.enable_features("contrib")


def _gaussian(scale: float):
    return dp.m.make_gaussian(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float),
                              scale=scale)


def _opendp_epsilon(meas, delta: float) -> float:
    return dp.c.make_zCDP_to_approxDP(meas).map(1.0).epsilon(delta)


def test_epsilon_for_rho_matches_opendp_conversion():
    meas = _gaussian(10.0)
    rho = meas.map(1.0)
    assert epsilon_for_rho(rho, 1e-6) == pytest.approx(_opendp_epsilon(meas, 1e-6), rel=1e-12)


def test_epsilon_for_rho_is_zero_at_zero_and_monotone():
    assert epsilon_for_rho(0.0, 1e-6) == 0.0
    values = [epsilon_for_rho(r, 1e-6) for r in (1e-6, 1e-4, 1e-2, 1.0, 10.0)]
    assert values == sorted(values) and len(set(values)) == len(values)
    # smaller delta, larger epsilon
    assert epsilon_for_rho(0.01, 1e-9) > epsilon_for_rho(0.01, 1e-6) > epsilon_for_rho(0.01, 1e-3)


def test_cks_bound_is_tighter_than_classic_bound():
    for rho in (1e-4, 0.01, 1.0):
        classic = rho + 2 * math.sqrt(rho * math.log(1 / 1e-6))
        assert epsilon_for_rho(rho, 1e-6) < classic


@pytest.mark.parametrize("epsilon,delta", [(1.0, 5e-7), (0.1, 1e-9), (3.0, 1e-5), (1e-3, 1e-6)])
def test_round_trip_is_conservative_and_tight(epsilon, delta):
    rho = rho_for_epsilon(epsilon, delta)
    assert rho > 0
    # conservative: the returned rho never converts to more than epsilon ...
    assert epsilon_for_rho(rho, delta) <= epsilon
    # ... and it is the largest such rho, up to the bisection precision
    assert epsilon_for_rho(rho, delta) >= epsilon * (1 - 1e-9)
    assert epsilon_for_rho(rho * (1 + 1e-9), delta) > epsilon
    # the other direction
    eps = epsilon_for_rho(rho, delta)
    assert rho_for_epsilon(eps, delta) == pytest.approx(rho, rel=1e-9)


def test_rho_for_epsilon_edge_cases():
    assert rho_for_epsilon(0.0, 1e-6) == 0.0
    with pytest.raises(ValueError, match="delta"):
        rho_for_epsilon(1.0, 0.0)
    with pytest.raises(ValueError, match="delta"):
        epsilon_for_rho(0.1, 1.0)
    with pytest.raises(ValueError):
        epsilon_for_rho(-1.0, 1e-6)


def test_huge_rho_falls_back_to_a_valid_bound():
    # OpenDP overflows here; the classic Bun-Steinke bound is still an upper bound.
    rho = 1e8
    assert epsilon_for_rho(rho, 5e-7) == pytest.approx(rho + 2 * math.sqrt(rho * math.log(2e6)))


@pytest.mark.parametrize("k", [2, 10, 100])
def test_k_gaussian_queries_cost_about_sqrt_k(k):
    """OpenDP composes k Gaussian measurements in zCDP (rho adds) and converts once: far
    less than k times the epsilon of one query, and about sqrt(k) times it."""
    delta = 1e-6
    single = _gaussian(10.0)
    eps_one = _opendp_epsilon(single, delta)
    composed = dp.c.make_composition([_gaussian(10.0) for _ in range(k)])
    assert composed.map(1.0) == pytest.approx(k * single.map(1.0))
    eps_k = _opendp_epsilon(composed, delta)
    assert eps_k < k * eps_one
    assert eps_k < 1.5 * math.sqrt(k) * eps_one
    # our ledger arithmetic (add rho, convert the total) gives OpenDP's number
    assert epsilon_for_rho(k * single.map(1.0), delta) == pytest.approx(eps_k, rel=1e-9)

"""Budget arithmetic without a ledger: sums, tolerance, limits."""
import math
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from accountant.budget import REL_TOL, BudgetStatus, Limits, Spent
from accountant.cost import PrivacyCost
from accountant.zcdp import epsilon_for_rho, rho_for_epsilon
from sqlgate.metadata import Budget


def _admit_all(limits: Limits, costs: list[PrivacyCost]) -> list[PrivacyCost]:
    rows: list[tuple] = []
    admitted = []
    for cost in costs:
        if limits.fits(Spent.from_rows(rows), cost):
            rows.append((cost.measure, cost.epsilon, cost.delta, cost.rho))
            admitted.append(cost)
    return admitted


def test_ten_tenths_fit_exactly_in_one():
    limits = Limits.for_budget("pure", Budget(1.0, 0.0))
    admitted = _admit_all(limits, [PrivacyCost("pure", 0.1)] * 11)
    assert len(admitted) == 10


def test_three_thirds_and_hundred_hundredths_fit():
    assert len(_admit_all(Limits.for_budget("pure", Budget(1.0)), [PrivacyCost("pure", 1 / 3)] * 4)) == 3
    assert len(_admit_all(Limits.for_budget("pure", Budget(1.0)), [PrivacyCost("pure", 0.01)] * 101)) == 100


def test_real_overspend_is_refused():
    limits = Limits.for_budget("pure", Budget(1.0, 1e-6))
    assert not limits.fits(Spent.from_rows([("pure", 0.5, 0.0, 0.0)]), PrivacyCost("pure", 0.5 + 1e-9))
    assert not limits.fits(Spent(), PrivacyCost("pure", 0.1, delta=2e-6))
    assert limits.fits(Spent(), PrivacyCost("pure", 0.1, delta=1e-6))


@settings(max_examples=200, deadline=None)
@given(budget=st.floats(1e-3, 100.0),
       costs=st.lists(st.floats(1e-6, 10.0), min_size=1, max_size=60))
def test_admitted_costs_never_exceed_budget_beyond_tolerance(budget, costs):
    """Exact (rational) sum of everything admitted <= budget * (1 + 1e-12) (+ 4 ulp of
    rounding in the check itself)."""
    limits = Limits.for_budget("pure", Budget(budget))
    admitted = _admit_all(limits, [PrivacyCost("pure", c) for c in costs])
    exact = sum((Fraction(c.epsilon) for c in admitted), Fraction(0))
    assert exact <= Fraction(budget) * (1 + Fraction(REL_TOL)) * (1 + Fraction(4, 2**52))


def test_fsum_sums_do_not_depend_on_order():
    values = [0.1, 1e-9, 0.7, 1e-17, 0.2] * 50
    forward = Spent.from_rows(("pure", v, 0.0, 0.0) for v in values)
    backward = Spent.from_rows(("pure", v, 0.0, 0.0) for v in reversed(values))
    assert forward.pure_epsilon == backward.pure_epsilon == math.fsum(values)


def test_zcdp_limits_reserve_half_delta_for_conversion():
    budget = Budget(1.0, 1e-6)
    limits = Limits.for_budget("zcdp", budget)
    assert limits.delta == 5e-7
    assert limits.rho == rho_for_epsilon(1.0, 5e-7)
    assert limits.fits(Spent(), PrivacyCost("zcdp", rho=limits.rho))
    assert not limits.fits(Spent.from_rows([("zcdp", 0.0, 0.0, limits.rho)]),
                           PrivacyCost("zcdp", rho=limits.rho * 1e-6))
    assert limits.fits(Spent(), PrivacyCost("zcdp", delta=5e-7))
    assert not limits.fits(Spent(), PrivacyCost("zcdp", delta=6e-7))


def test_zcdp_with_zero_delta_allows_no_gaussian_query():
    limits = Limits.for_budget("zcdp", Budget(1.0, 0.0))
    assert limits.rho == 0.0
    assert not limits.fits(Spent(), PrivacyCost("zcdp", rho=1e-12))
    assert limits.fits(Spent(), PrivacyCost("zcdp"))  # free


def test_pure_charges_count_in_zcdp_as_half_epsilon_squared():
    spent = Spent.from_rows([("pure", 0.2, 1e-8, 0.0), ("zcdp", 0.1, 0.0, 0.003)])
    assert spent.rho == math.fsum([0.2 * 0.2 / 2, 0.003])
    assert spent.delta == 1e-8
    assert spent.pure_epsilon == 0.2 and spent.zcdp_queries == 1
    # a pure budget cannot absorb zcdp charges
    assert not Limits.for_budget("pure", Budget(10.0)).fits(spent, PrivacyCost("pure", 0.1))


def test_status_zcdp_reports_converted_epsilon():
    budget = Budget(1.0, 1e-6)
    limits = Limits.for_budget("zcdp", budget)
    spent = Spent.from_rows([("zcdp", 0.3, 1e-7, 0.004), ("zcdp", 0.3, 0.0, 0.004)])
    status = BudgetStatus.compute(limits, spent)
    assert status.spent_rho == 0.008 and status.queries == 2
    assert status.spent_epsilon == epsilon_for_rho(0.008, 5e-7)
    assert status.remaining_epsilon == 1.0 - status.spent_epsilon
    assert status.spent_delta == 1e-7 + 5e-7  # direct deltas + the conversion reserve
    assert status.remaining_delta == 5e-7 - 1e-7
    assert status.remaining_rho == limits.rho - 0.008
    fresh = BudgetStatus.compute(limits, Spent())
    assert fresh.spent_epsilon == 0.0 and fresh.spent_delta == 0.0 and fresh.remaining_epsilon == 1.0
    assert set(status.to_dict()) >= {"spent_rho", "remaining_rho", "remaining_epsilon"}

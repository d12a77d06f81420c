"""Budget arithmetic: what has been spent, what a budget allows, whether a cost fits.

Pure functions over numbers read from the ledger; no I/O. See `accountant/zcdp.py` for why
each measure is filtered on its own and never by the min of two accountings.

Semantics (docs/INTERFACES.md, "Accountant"):

* ``pure``: a charge fits iff  sum eps + eps <= E  and  sum delta + delta <= D.
* ``zcdp``: a budget (E, D) keeps D/2 for the zCDP -> (epsilon, delta) conversion and D/2 for
  direct deltas (thresholded key release). A charge fits iff
  sum rho + rho <= rho_for_epsilon(E, D/2)  and  sum delta + delta <= D/2.
  With D = 0 no Gaussian query fits (rho_max = 0): Gaussian noise needs delta > 0.

Float accumulation. Stored costs are the floats the mechanisms were calibrated with. Sums are
taken with `math.fsum`, which is correctly rounded: the result is within half an ulp (1.1e-16
relative) of the exact sum of the stored floats, whatever the number or order of charges, so
error does not grow with the history. A charge is then admitted iff the sum is at most
limit * (1 + REL_TOL). REL_TOL = 1e-12 is the only slack: it makes decimal splits fit their
decimal total (ten charges of the float 0.1 sum to 1.0000000000000000555 exactly) and bounds
any real overspend by 1e-12 relative, far below anything that changes a privacy guarantee.
Integer micro-units were rejected: rounding each cost up (the sound direction) makes 10 x 0.1
*not* fit in 1.0, and tiny deltas (1e-10) would need a second scale.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from accountant.cost import MEASURES, PrivacyCost
from accountant.zcdp import epsilon_for_rho, rho_for_epsilon
from sqlgate.metadata import Budget

REL_TOL = 1e-12


def within(total: float, limit: float) -> bool:
    """total <= limit, up to the documented relative slack (none when limit is 0)."""
    return total <= limit + limit * REL_TOL


def rho_of(cost: PrivacyCost) -> float:
    """The zCDP rho a cost amounts to. An epsilon-DP (pure) cost is (epsilon^2/2)-zCDP
    (Bun & Steinke 2016, Prop. 1.4; with its delta, delta-approximate zCDP, Prop. 1.13)."""
    if cost.measure == "zcdp":
        return cost.rho
    return cost.epsilon * cost.epsilon / 2.0


@dataclass(frozen=True)
class Spent:
    """Sums over one (analyst, dataset)'s charges, computed with math.fsum."""

    queries: int = 0
    pure_epsilon: float = 0.0
    """sum of epsilon over charges made in the pure measure."""
    delta: float = 0.0
    """sum of the direct deltas of all charges (both measures add delta the same way)."""
    rho: float = 0.0
    """zCDP view: sum of rho of zcdp charges plus epsilon^2/2 of pure charges."""
    zcdp_queries: int = 0
    """charges made in zcdp; a pure budget cannot absorb them (no per-query delta to convert at)."""

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, float, float, float]]) -> "Spent":
        """rows: (measure, epsilon, delta, rho) per charge."""
        queries = zcdp_queries = 0
        pure_eps: list[float] = []
        deltas: list[float] = []
        rhos: list[float] = []
        for measure, epsilon, delta, rho in rows:
            queries += 1
            deltas.append(delta)
            if measure == "zcdp":
                zcdp_queries += 1
                rhos.append(rho)
            else:
                pure_eps.append(epsilon)
                rhos.append(epsilon * epsilon / 2.0)
        return cls(queries, math.fsum(pure_eps), math.fsum(deltas), math.fsum(rhos), zcdp_queries)


@dataclass(frozen=True)
class Limits:
    """What a budget allows, in the dataset's measure."""

    measure: str
    total: Budget
    epsilon: float  # pure: E; zcdp: E (display only)
    delta: float  # the part of D available to direct deltas
    rho: float  # zcdp: rho_for_epsilon(E, D/2); pure: 0

    @classmethod
    def for_budget(cls, measure: str, total: Budget) -> "Limits":
        if measure not in MEASURES:
            raise ValueError(f"unknown privacy measure {measure!r}")
        if measure == "pure":
            return cls(measure, total, total.epsilon, total.delta, 0.0)
        half = total.delta / 2.0
        rho_max = rho_for_epsilon(total.epsilon, half) if half > 0 and total.epsilon > 0 else 0.0
        return cls(measure, total, total.epsilon, half, rho_max)

    def fits(self, spent: Spent, cost: PrivacyCost) -> bool:
        if cost.is_free:
            return True  # refusing a zero-cost request protects nothing
        if not within(math.fsum([spent.delta, cost.delta]), self.delta):
            return False
        if self.measure == "pure":
            return (cost.measure == "pure" and spent.zcdp_queries == 0
                    and within(math.fsum([spent.pure_epsilon, cost.epsilon]), self.epsilon))
        return within(math.fsum([spent.rho, rho_of(cost)]), self.rho)


@dataclass(frozen=True)
class BudgetStatus:
    """An analyst's budget on a dataset, for display and for clients to plan.

    pure: spent/remaining are sums of epsilon and delta.
    zcdp: spent_epsilon = epsilon_for_rho(spent_rho, D/2) and spent_delta = direct deltas
    plus the D/2 conversion reserve once any rho is spent, so (spent_epsilon, spent_delta) is
    the DP guarantee of everything released so far. remaining_epsilon = E - spent_epsilon;
    remaining_delta is what thresholded releases can still use (D/2 - direct deltas);
    remaining_rho is what Gaussian noise can still use. Remaining values are never negative.
    """

    total: Budget
    spent_epsilon: float
    spent_delta: float
    remaining_epsilon: float
    remaining_delta: float
    measure: str
    spent_rho: float
    queries: int
    remaining_rho: float = 0.0
    total_rho: float = 0.0

    @classmethod
    def compute(cls, limits: Limits, spent: Spent) -> "BudgetStatus":
        total = limits.total
        if limits.measure == "pure":
            spent_eps = spent.pure_epsilon if spent.zcdp_queries == 0 else math.inf
            return cls(total, spent_eps, spent.delta, _left(total.epsilon, spent_eps),
                       _left(total.delta, spent.delta), "pure", 0.0, spent.queries)
        if spent.rho == 0.0:
            spent_eps, spent_delta = 0.0, spent.delta
        elif limits.delta > 0:
            spent_eps = epsilon_for_rho(spent.rho, limits.delta)
            spent_delta = math.fsum([spent.delta, limits.delta])
        else:  # delta lowered to 0 after Gaussian queries: no finite epsilon describes them
            spent_eps, spent_delta = math.inf, spent.delta
        return cls(total, spent_eps, spent_delta, _left(total.epsilon, spent_eps),
                   _left(limits.delta, spent.delta), "zcdp", spent.rho, spent.queries,
                   _left(limits.rho, spent.rho), limits.rho)

    def to_dict(self) -> dict:
        body = {
            "measure": self.measure,
            "total": {"epsilon": self.total.epsilon, "delta": self.total.delta},
            "spent_epsilon": _json_number(self.spent_epsilon),
            "spent_delta": self.spent_delta,
            "remaining_epsilon": self.remaining_epsilon,
            "remaining_delta": self.remaining_delta,
            "queries": self.queries,
        }
        if self.measure == "zcdp":
            body.update(spent_rho=self.spent_rho, remaining_rho=self.remaining_rho,
                        total_rho=self.total_rho)
        return body


def _left(limit: float, spent: float) -> float:
    return max(0.0, limit - spent)


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None

"""What one query costs, in the privacy measure of the budget it is charged to.

Two measures, chosen per dataset by its owner (metadata `query.mechanism`):

* ``pure`` (Laplace datasets): every query is (epsilon, delta)-DP and queries compose by
  basic composition, sum of epsilons and sum of deltas. For pure Laplace releases delta is 0;
  thresholded key release adds a delta.
* ``zcdp`` (Gaussian datasets): every query is (rho, delta)-approximate zCDP; rho and delta
  add up under composition, and only the total is converted to (epsilon, delta) with
  OpenDP. k queries then cost about sqrt(k) times one query instead of k times.
"""
from __future__ import annotations

from dataclasses import dataclass

MEASURES = ("pure", "zcdp")


@dataclass(frozen=True)
class PrivacyCost:
    measure: str
    epsilon: float = 0.0
    """pure: epsilon spent. zcdp: the (epsilon, delta) this query alone amounts to (display only)."""
    delta: float = 0.0
    """delta spent directly (thresholded key release); adds up in both measures."""
    rho: float = 0.0
    """zcdp only: the zCDP rho spent."""

    def __post_init__(self):
        if self.measure not in MEASURES:
            raise ValueError(f"unknown privacy measure {self.measure!r}")
        if self.epsilon < 0 or self.delta < 0 or self.rho < 0:
            raise ValueError("privacy costs are non-negative")

    def __add__(self, other: "PrivacyCost") -> "PrivacyCost":
        if other.measure != self.measure:
            raise ValueError("cannot add costs of different privacy measures")
        return PrivacyCost(self.measure, self.epsilon + other.epsilon,
                           self.delta + other.delta, self.rho + other.rho)

    @property
    def is_free(self) -> bool:
        return self.epsilon == 0 and self.delta == 0 and self.rho == 0

    def to_dict(self) -> dict:
        body = {"measure": self.measure, "epsilon": self.epsilon, "delta": self.delta}
        if self.measure == "zcdp":
            body["rho"] = self.rho
        return body


def zero_cost(measure: str) -> PrivacyCost:
    return PrivacyCost(measure)

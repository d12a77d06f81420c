"""`Accountant`: per-analyst, per-dataset privacy budgets over a durable ledger.

Registration (measure + metadata budgets) is in memory and comes from dataset metadata at
start-up; owner overrides are durable and live in the ledger. The effective budget of an
analyst is: ledger override, else the metadata's per-analyst budget, else the default.

Each dataset is filtered in exactly one measure (see accountant/zcdp.py for why one, and
accountant/budget.py for the arithmetic). `charge` checks and records in one ledger
transaction under a per-(analyst, dataset) lock, so concurrent charges cannot overspend.
The gateway charges (reserves) while its engine runs and `refund`s when the query fails
before noise touched data; a crash in between leaves the analyst charged for nothing
(conservative: never an overspend).
Error messages carry only public facts: names, budgets and costs, never query data.
"""
from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass, field
from typing import Callable, Mapping

from accountant.budget import BudgetStatus, Limits, Spent, rho_of
from accountant.cost import MEASURES, PrivacyCost
from accountant.ledger import ChargeRequest, Decide, Ledger
from accountant.zcdp import epsilon_for_rho
from sqlgate.errors import BudgetExhausted, InvalidParameter, NotFound
from sqlgate.metadata import Budget


@dataclass(frozen=True)
class PendingCharge:
    """A charge started by `Accountant.reserve`: `finish()` -> charge id, once."""

    finish: Callable[[], int]
    begun: bool
    """True: checked and inserted under the held write lock; `finish` only commits and never
    waits for a lock. False: `finish` makes the whole charge (and may wait for the lock)."""


@dataclass(frozen=True)
class DatasetAccounting:
    name: str
    measure: str
    default_budget: Budget
    analyst_budgets: Mapping[str, Budget] = field(default_factory=dict)


class Accountant:
    def __init__(self, ledger: Ledger):
        if not isinstance(ledger, Ledger):
            raise TypeError("Accountant needs a Ledger (SqliteLedger or PostgresLedger)")
        self.ledger = ledger
        self._datasets: dict[str, DatasetAccounting] = {}
        self._lock = threading.Lock()
        # (measure, budget) pairs whose Limits were computed (rho_for_epsilon cached); a set
        # only grows, and add/contains are atomic, so no lock is needed around it.
        self._warm_budgets: set[tuple[str, Budget]] = set()

    # ------------------------------------------------------------------ registration

    def register_dataset(self, name: str, measure: str = "pure",
                         default_budget: Budget | None = None,
                         analyst_budgets: Mapping[str, Budget] | None = None) -> None:
        if measure not in MEASURES:
            raise InvalidParameter(f"unknown privacy measure {measure!r}; use one of {MEASURES}")
        if default_budget is None:
            raise InvalidParameter(f"dataset '{name}' needs a default budget")
        _check_name(name, "dataset")
        budgets = {str(a): _check_budget(b) for a, b in dict(analyst_budgets or {}).items()}
        entry = DatasetAccounting(name, measure, _check_budget(default_budget), budgets)
        with self._lock:
            self._datasets[name] = entry

    def _dataset(self, name: str) -> DatasetAccounting:
        with self._lock:
            entry = self._datasets.get(name)
        if entry is None:
            raise NotFound(f"dataset '{name}' is not registered with the privacy accountant")
        return entry

    def _budget(self, ds: DatasetAccounting, analyst: str, override: Budget | None) -> Budget:
        if override is not None:
            return override
        return ds.analyst_budgets.get(analyst, ds.default_budget)

    # ------------------------------------------------------------------ owner actions

    def set_budget(self, analyst: str, dataset: str, budget: Budget, set_by: str) -> None:
        """Durable override; may be below what was already spent (then nothing more fits)."""
        _check_name(analyst, "analyst")
        ds = self._dataset(dataset)
        budget = _check_budget(budget)
        Limits.for_budget(ds.measure, budget)  # warm the rho_max cache outside any lock
        self.ledger.set_override(analyst, dataset, budget, str(set_by))

    # ------------------------------------------------------------------ reads

    def status(self, analyst: str, dataset: str) -> BudgetStatus:
        ds = self._dataset(dataset)
        override, spent = self.ledger.snapshot(analyst, dataset)
        limits = Limits.for_budget(ds.measure, self._budget(ds, analyst, override))
        return BudgetStatus.compute(limits, spent)

    def check(self, analyst: str, dataset: str, cost: PrivacyCost) -> None:
        """Raise BudgetExhausted if `cost` does not fit now. Reads only; writes nothing."""
        ds = self._dataset(dataset)
        _check_cost(ds, cost)
        override, spent = self.ledger.snapshot(analyst, dataset)
        self._decide(ds, analyst, cost, override, spent)

    def history(self, analyst: str | None = None, dataset: str | None = None) -> list[dict]:
        return self.ledger.history(analyst, dataset)

    def cached_answer(self, analyst: str, dataset: str, query_key: str) -> bytes | None:
        self._dataset(dataset)
        return self.ledger.cached_answer(analyst, dataset, query_key)

    def cached_or_check(self, analyst: str, dataset: str, query_key: str,
                        cost: PrivacyCost) -> bytes | None:
        """The cached answer of this query if there is one (free); otherwise None after a
        budget pre-check (raises BudgetExhausted). One ledger read; writes nothing."""
        ds = self._dataset(dataset)
        _check_cost(ds, cost)
        cached, override, spent = self.ledger.lookup(analyst, dataset, query_key)
        if cached is not None:
            return cached
        self._decide(ds, analyst, cost, override, spent)
        return None

    # ------------------------------------------------------------------ writes

    def charge(self, analyst: str, dataset: str, cost: PrivacyCost, *, query_key: str | None = None,
               query_text: str | None = None, answer: bytes | None = None) -> int:
        """Re-check and record `cost` in one transaction; returns the charge id.

        Charge before release: nothing computed with noise may reach the analyst before this
        returns (it is durable then). `answer` (the noisy answer, computed but not yet
        released) is stored in the same transaction, for free identical repeats. Never
        refunded by its callers (the router, torch_bridge); see `reserve` for the gateway's.
        """
        if answer is not None and not isinstance(answer, (bytes, bytearray, memoryview)):
            raise InvalidParameter("answers are stored as bytes")
        request, decide, ds = self._prepare(analyst, dataset, cost, query_key, query_text)
        return self._charge(request, decide, ds, None if answer is None else bytes(answer))

    def reserve(self, analyst: str, dataset: str, cost: PrivacyCost, *,
                query_key: str | None = None, query_text: str | None = None) -> PendingCharge:
        """Start the charge of a query that is about to run. `PendingCharge.finish()` makes
        it durable and returns the charge id (call it once, from any thread: the gateway
        calls it on a worker while its engine runs, and waits for it before releasing).

        When the ledger's write lock is free, the re-check and the insert happen here, on
        the calling thread, and `finish` only commits (the fsync; `begun` is True: the lock
        is held until then, so run it soon, and never behind work that waits for that
        lock); a refusal then raises BudgetExhausted here, before the query runs. Otherwise
        (the lock is busy, or the ledger cannot split a charge) `finish` makes the whole
        charge and raises the refusal itself. The charge may be `refund`ed if the query
        fails before noise touched data; a crash before that leaves it charged
        (conservative: never an overspend).
        """
        request, decide, ds = self._prepare(analyst, dataset, cost, query_key, query_text)
        while True:
            try:
                commit = self.ledger.try_begin_charge(request, decide)
                break
            except _ColdLimits as cold:
                self._warm(ds.measure, cold.budget)
        if commit is not None:
            return PendingCharge(commit, begun=True)
        return PendingCharge(functools.partial(self._charge, request, decide, ds, None),
                             begun=False)

    def _prepare(self, analyst: str, dataset: str, cost: PrivacyCost, query_key: str | None,
                 query_text: str | None) -> tuple[ChargeRequest, Decide, DatasetAccounting]:
        """The ledger request and the budget decision (run under the ledger's lock)."""
        _check_name(analyst, "analyst")
        ds = self._dataset(dataset)
        _check_cost(ds, cost)
        request = ChargeRequest(analyst, dataset, cost.measure, cost.epsilon, cost.delta,
                                cost.rho, query_key, query_text)

        def decide(override: Budget | None, spent: Spent) -> None:
            budget = self._budget(ds, analyst, override)
            if not self._is_warm(ds.measure, budget):
                raise _ColdLimits(budget)  # rolls the transaction back: nothing written
            self._decide(ds, analyst, cost, override, spent)

        # The (slow, ~0.1 s) rho_for_epsilon bisection never runs under the lock: a budget
        # not seen before aborts the transaction, is computed outside it, and the charge
        # starts again. The usual budget is warmed here.
        self._warm(ds.measure, self._budget(ds, analyst, None))
        return request, decide, ds

    def _charge(self, request: ChargeRequest, decide: Decide, ds: DatasetAccounting,
                answer: bytes | None) -> int:
        # No separate pre-check read: the decision is made under the ledger's lock anyway
        # (callers like the gateway pre-check already), and a read per charge was a
        # visible part of a query's fixed cost.
        while True:
            try:
                return self.ledger.charge(request, decide, answer=answer)
            except _ColdLimits as cold:
                self._warm(ds.measure, cold.budget)

    def refund(self, charge_id: int, reason: str) -> None:
        """Durably take back a charge whose query failed before noise touched its data (the
        engine failed, timed out, was cancelled, the dataset was replaced). `reason` is
        public text kept in the history. Refused (Conflict) once an answer was recorded
        for the charge, or if it is already refunded; NotFound for an unknown id."""
        self.ledger.refund(_charge_id(charge_id), reason)

    def record_answer(self, charge_id: int, answer: bytes) -> None:
        """Store a charge's released answer for free identical repeats, in its own write
        that does not wait for a sync: an OS crash may lose it (never the charge), and then
        a repeat is charged again (conservative). Conflict if the charge was refunded or
        already has an answer."""
        if not isinstance(answer, (bytes, bytearray, memoryview)):
            raise InvalidParameter("answers are stored as bytes")
        self.ledger.record_answer(_charge_id(charge_id), bytes(answer))

    # ------------------------------------------------------------------ policy

    def _decide(self, ds: DatasetAccounting, analyst: str, cost: PrivacyCost,
                override: Budget | None, spent: Spent) -> None:
        budget = self._budget(ds, analyst, override)
        limits = Limits.for_budget(ds.measure, budget)
        self._warm_budgets.add((ds.measure, budget))
        if limits.fits(spent, cost):
            return
        raise _exhausted(ds, analyst, cost, limits, spent)

    def _is_warm(self, measure: str, budget: Budget) -> bool:
        # Pure limits are plain arithmetic; zcdp ones need rho_for_epsilon (lru-cached).
        return measure == "pure" or (measure, budget) in self._warm_budgets

    def _warm(self, measure: str, budget: Budget) -> None:
        if not self._is_warm(measure, budget):
            Limits.for_budget(measure, budget)
            self._warm_budgets.add((measure, budget))


# ---------------------------------------------------------------------- helpers


class _ColdLimits(Exception):
    """Raised inside a charge's transaction when the budget's limits are not computed yet."""

    def __init__(self, budget: Budget):
        super().__init__("budget limits not computed yet")
        self.budget = budget


def _charge_id(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParameter("a charge id is an integer")
    return value


def _check_name(value: str, what: str) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidParameter(f"{what} must be a non-empty name")


def _check_budget(budget: Budget) -> Budget:
    eps, delta = budget.epsilon, budget.delta
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise InvalidParameter("budget epsilon must be a non-negative finite number")
    if not (isinstance(delta, (int, float)) and 0 <= delta < 1):
        raise InvalidParameter("budget delta must be in [0, 1)")
    return Budget(epsilon=float(eps), delta=float(delta))


def _check_cost(ds: DatasetAccounting, cost: PrivacyCost) -> None:
    if not isinstance(cost, PrivacyCost):
        raise InvalidParameter("cost must be a PrivacyCost")
    if not all(math.isfinite(v) for v in (cost.epsilon, cost.delta, cost.rho)):
        raise InvalidParameter("privacy costs must be finite")
    # A zCDP cost has no (epsilon, delta) of its own that basic composition could add;
    # a pure cost fits in zCDP as epsilon^2/2 (see budget.rho_of).
    if ds.measure == "pure" and cost.measure != "pure":
        raise InvalidParameter(f"dataset '{ds.name}' is accounted in pure DP; "
                               f"a {cost.measure} cost cannot be charged to it")


def _fmt(value: float) -> str:
    return "inf" if math.isinf(value) else format(value, ".12g")


def _exhausted(ds: DatasetAccounting, analyst: str, cost: PrivacyCost, limits: Limits,
               spent: Spent) -> BudgetExhausted:
    status = BudgetStatus.compute(limits, spent)
    total = limits.total
    details = {
        "dataset": ds.name, "analyst": analyst, "measure": ds.measure,
        "requested_epsilon": cost.epsilon, "requested_delta": cost.delta,
        "remaining_epsilon": status.remaining_epsilon, "remaining_delta": status.remaining_delta,
        "total_epsilon": total.epsilon, "total_delta": total.delta,
        "spent_epsilon": status.spent_epsilon if math.isfinite(status.spent_epsilon) else None,
        "spent_delta": status.spent_delta, "queries": spent.queries,
    }
    head = f"privacy budget exhausted for analyst '{analyst}' on dataset '{ds.name}'"
    hint = ("ask the dataset owner for more budget, or ask for a smaller epsilon "
            "(a less accurate answer)")
    if ds.measure == "pure":
        message = (f"{head}: this query needs epsilon={_fmt(cost.epsilon)}, "
                   f"delta={_fmt(cost.delta)}; remaining epsilon={_fmt(status.remaining_epsilon)}, "
                   f"delta={_fmt(status.remaining_delta)} "
                   f"(of epsilon={_fmt(total.epsilon)}, delta={_fmt(total.delta)})")
        if spent.zcdp_queries:
            message += "; zCDP charges on this dataset cannot be accounted in pure DP"
        return BudgetExhausted(message, hint=hint, details=details)
    rho = rho_of(cost)
    details.update(requested_rho=rho, remaining_rho=status.remaining_rho,
                   spent_rho=spent.rho, total_rho=limits.rho)
    if rho > 0 and total.delta == 0:
        return BudgetExhausted(
            f"{head}: Gaussian noise is accounted in zCDP, whose conversion to (epsilon, delta) "
            f"needs delta > 0, and this budget has delta=0; delta must be > 0 "
            f"(remaining epsilon={_fmt(status.remaining_epsilon)}, delta=0)",
            hint="ask the dataset owner to set a budget with delta > 0 (e.g. 1e-6)",
            details=details)
    # The query's own epsilon as the caller stated it, else its conversion at D/2.
    own_eps = cost.epsilon or (epsilon_for_rho(rho, limits.delta) if rho > 0 else 0.0)
    message = (f"{head}: this query needs epsilon={_fmt(own_eps)} (rho={_fmt(rho)}), "
               f"delta={_fmt(cost.delta)}; remaining rho={_fmt(status.remaining_rho)} "
               f"(epsilon={_fmt(status.remaining_epsilon)}), delta={_fmt(status.remaining_delta)} "
               f"(of epsilon={_fmt(total.epsilon)}, delta={_fmt(total.delta)})")
    return BudgetExhausted(message, hint=hint, details=details)

"""The domain-side hook federation needs from a Gateway, built from its public pieces.

"Compute the un-noised bounded partial aggregates of a plan, charging the ledger, without
releasing them": the same order as Gateway.query (plan, budget pre-check, run the bounded SQL,
charge atomically) but it stops before noise and post-processing and hands back the integer
vector, which the caller masks (and, at the noise domain, noises) before it leaves.

Uses only gateway.catalog.resolve_table, gateway.dataset, gateway.accountant,
gateway.executor and gateway.statement_timeout_s.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

from server.router.protocol import Federation, FederatedPlan, partial_vector, plan_federated
from sqlgate.stored_sums import without_stored_sums


@dataclass(frozen=True)
class ChargedPartial:
    vector: list[int]
    """Un-noised; never leaves the domain unmasked."""
    charge_id: int


def federated_plan(gateway, sql: str, epsilon: float | None, federation: Federation) -> FederatedPlan:
    # Planned as the router plans it, from the shared metadata: without the sums and
    # truncation ranks this domain's catalog stored (their bounded SQL differs, so would
    # the fingerprint).
    return plan_federated(sql, without_stored_sums(gateway.catalog.resolve_table),
                          gateway.dataset, epsilon, federation)


def check_budget(gateway, fplan: FederatedPlan, analyst: str) -> None:
    """Raises BudgetExhausted if the query does not fit now; writes nothing."""
    gateway.accountant.check(analyst, fplan.meta.name, fplan.release.cost)


def charged_partial(gateway, fplan: FederatedPlan, *, analyst: str, query_key: str,
                    query_text: str, cancel: threading.Event | None = None) -> ChargedPartial:
    """Pre-check, run the bounded SQL, charge; the returned vector is not yet protected."""
    meta = fplan.meta
    gateway.accountant.check(analyst, meta.name, fplan.release.cost)
    kwargs = {"timeout_s": gateway.statement_timeout_s}
    if cancel is not None:
        kwargs["cancel"] = cancel
    raw = gateway.executor.run(fplan.plan.bounded_sql, **kwargs)
    charge_id = gateway.accountant.charge(analyst, meta.name, fplan.release.cost,
                                          query_key=query_key, query_text=query_text)
    # From here on the budget is spent (rule 4): a failure below does not refund.
    return ChargedPartial(partial_vector(fplan, raw.rows), charge_id)


def federated_query_key(fplan: FederatedPlan, nonce: str) -> str:
    """Unique per federated run: its masked share is not a reusable answer, so a repeat of
    the same SQL is a new charge (the router does not cache answers)."""
    text = "\x1f".join(["federated", fplan.fingerprint, nonce])
    return hashlib.sha256(text.encode()).hexdigest()

"""The router: one gateway-like front for several domains sharing a dataset.

It plans queries from the domains' (identical) public metadata, asks every domain to prepare
(plan + budget pre-check, nothing charged), then to share (each charges its own ledger, then
sends its masked partial; the noise domain's share also carries the whole query's OpenDP
noise). The router only ever holds masked shares, and the noisy total once all arrived; a
missing share means no answer. It never holds a pair key, a partial, or an un-noised total.

`Router` has the Gateway's read/query surface (query, explain, describe, datasets, dataset,
budget), so front ends written for a Gateway (the HTTP app, the PG wire server) can serve it.
"""
from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from server import secure_sum
from server.router.client import DomainClient
from server.router.config import RouterConfig
from server.router.errors import FederationFailed, FederationMismatch
from server.router.protocol import (FederatedPlan, MetadataResolver, metadata_from_public,
                                    plan_federated, schema_fingerprint, tightest_budget)
from server.router.release import output_columns, release_result
from rewriter import plan_query
from sqlgate.errors import InvalidParameter, SqlgateError, UnsupportedQuery
from sqlgate.metadata import DatasetMeta
from sqlgate.results import DPResult, Explanation, OutputColumn

Observer = Callable[[str, str, Mapping[str, Any]], None]
"""observer(phase, domain, message): every message the router receives, as received."""

_METADATA_TTL_S = 60.0


@dataclass(frozen=True)
class FederatedBudget:
    """An analyst's budget on a federated dataset: every domain's, and the tightest."""

    dataset: str
    domains: Mapping[str, Mapping[str, Any]]

    @property
    def remaining_epsilon(self) -> float:
        return min(float(b.get("remaining_epsilon", 0.0)) for b in self.domains.values())

    @property
    def remaining_delta(self) -> float:
        return min(float(b.get("remaining_delta", 0.0)) for b in self.domains.values())

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "remaining_epsilon": self.remaining_epsilon,
                "remaining_delta": self.remaining_delta,
                "domains": {name: dict(body) for name, body in self.domains.items()}}


@dataclass
class _Catalog:
    resolver: MetadataResolver
    loaded_at: float


class Router:
    def __init__(self, config: RouterConfig, *, observer: Observer | None = None,
                 clients: Mapping[str, DomainClient] | None = None,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.federation = config.federation
        self.observer = observer
        self._clock = clock
        self._clients = dict(clients) if clients is not None else {
            name: DomainClient(endpoint, timeout_s=config.timeout_s, tls=config.tls)
            for name, endpoint in config.domains.items()}
        self._pool = ThreadPoolExecutor(max_workers=max(2, len(self._clients)),
                                        thread_name_prefix="sqlgate-router")
        self._catalog: _Catalog | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ metadata

    def datasets(self) -> list[DatasetMeta]:
        return self._resolver().datasets()

    def dataset(self, name: str) -> DatasetMeta:
        return self._resolver().dataset(name)

    def refresh(self) -> None:
        with self._lock:
            self._catalog = None
        self._resolver()

    def _resolver(self, scope: Iterable[str] | None = None) -> MetadataResolver:
        resolver = self._shared_resolver()
        return resolver if scope is None else resolver.scoped(scope)

    def _shared_resolver(self) -> MetadataResolver:
        with self._lock:
            cached = self._catalog
            if cached and self._clock() - cached.loaded_at < _METADATA_TTL_S:
                return cached.resolver
        answers = self._fan_out("metadata", lambda client: client.get("/datasets"))
        offered: dict[str, dict[str, str]] = {}
        bodies: dict[str, Mapping[str, Any]] = {}
        budgets: dict[str, list] = {}
        for domain, body in answers.items():
            if body.get("federation") != self.federation.to_dict():
                raise FederationMismatch(f"domain '{domain}' is configured for a different "
                                         "federation than the router (parties, noise domain "
                                         "or unit overlap)")
            for entry in body.get("datasets", []):
                name = str(entry["metadata"]["dataset"]).lower()
                offered.setdefault(name, {})[domain] = entry["schema_fingerprint"]
                bodies.setdefault(name, entry["metadata"])
                budgets.setdefault(name, []).append(entry.get("default_budget"))
        datasets = {}
        for name, by_domain in offered.items():
            # Only datasets every domain shares with the same schema can be combined.
            if set(by_domain) == set(self._clients) and len(set(by_domain.values())) == 1:
                meta = metadata_from_public(bodies[name], tightest_budget(budgets[name]))
                if schema_fingerprint(meta) == next(iter(by_domain.values())):
                    datasets[name] = meta
        resolver = MetadataResolver(datasets)
        with self._lock:
            self._catalog = _Catalog(resolver, self._clock())
        return resolver

    # ------------------------------------------------------------ gateway surface

    def dataset_of(self, sql: str, *, scope: Iterable[str] | None = None) -> str:
        """The dataset a query reads (planning only), for permission checks."""
        if not isinstance(sql, str):
            raise InvalidParameter("the query must be a string")
        return plan_query(sql, self._resolver(scope).resolve_table).dataset

    def describe(self, sql: str, *, scope: Iterable[str] | None = None) -> list[OutputColumn]:
        """Output columns, from metadata only: no domain data, no budget."""
        return list(output_columns(self._plan(sql, None, scope), with_accuracy=False))

    def explain(self, sql: str, *, analyst: str, epsilon: float | None = None,
                scope: Iterable[str] | None = None) -> Explanation:
        fplan = self._plan(sql, epsilon, scope)
        notes = ["federated: every domain charges this cost to its own ledger; the noise is "
                 f"added once, by domain '{self.federation.noise_domain}'"]
        try:
            budget = self.budget(analyst, fplan.meta.name)
        except SqlgateError:
            budget = None
            notes.append("the budget of some domain could not be read")
        return Explanation(dataset=fplan.meta.name, cost=fplan.release.cost,
                           columns=output_columns(fplan, with_accuracy=True),
                           rewritten_sql=fplan.plan.bounded_sql, mechanism=fplan.meta.mechanism,
                           key_release=fplan.plan.keys.mode, budget=budget, notes=tuple(notes))

    def budget(self, analyst: str, dataset: str) -> FederatedBudget:
        meta = self.dataset(dataset)
        answers = self._fan_out("budget", lambda client: client.get(
            f"/budgets/{meta.name}", params={"analyst": analyst}))
        return FederatedBudget(meta.name, {d: body["budget"] for d, body in answers.items()})

    def query(self, sql: str, *, analyst: str, epsilon: float | None = None,
              cancel: threading.Event | None = None,
              scope: Iterable[str] | None = None) -> DPResult:
        """One federated DP answer. `scope` limits which datasets the SQL may name (the
        caller's grants); others look exactly like missing ones, as on a Gateway."""
        fplan = self._plan(sql, epsilon, scope)
        request = {"sql": sql, "analyst": analyst, "epsilon": epsilon,
                   "fingerprint": fplan.fingerprint, "federation": self.federation.to_dict()}
        # Round 1: everyone plans and pre-checks the budget; nobody is charged yet, so a
        # domain that is down or over budget usually fails the query before any charge.
        prepared = self._fan_out("prepare", lambda client: client.post("/prepare", request))
        for domain, body in prepared.items():
            if body.get("fingerprint") != fplan.fingerprint or body.get("length") != fplan.length:
                raise FederationMismatch(f"domain '{domain}' planned the query differently")
        if cancel is not None and cancel.is_set():
            raise FederationFailed("the query was cancelled before any domain was charged")
        # Round 2: each domain charges its ledger, then sends its masked share.
        nonce = f"{int(self._clock())}.{secrets.token_hex(16)}"
        shares = self._fan_out("share", lambda client: client.post(
            "/share", dict(request, nonce=nonce)), charged_on_success=True)
        total = secure_sum.SecureSum(self.federation.parties, fplan.length)
        for domain in self.federation.parties:
            body = shares[domain]
            if body.get("fingerprint") != fplan.fingerprint:
                raise FederationMismatch(f"domain '{domain}' shared for a different plan")
            try:
                total.add(domain, secure_sum.from_wire(body.get("share", ""), fplan.length))
            except ValueError:
                raise FederationFailed(f"domain '{domain}' sent a malformed share; nothing "
                                       "was released", details={"domain": domain}) from None
        return release_result(fplan, total.total(), sql)

    def mock_table(self, dataset: str, table: str, rows: int = 100, seed: int = 0):
        """Fake rows generated from the public metadata only (as Gateway.mock_table)."""
        from sqlgate.mock import mock_dataset_table
        return mock_dataset_table(self.dataset(dataset), table, rows=rows, seed=seed)

    # Owner actions belong to the domains: the router holds no data and no ledger.

    def set_budget(self, analyst: str, dataset: str, budget, set_by: str = "owner"):
        raise UnsupportedQuery("budgets of a federated dataset are set by each domain's owner "
                               "at that domain; the router holds no ledger")

    def add_dataset(self, meta, sources=None, *, replace: bool = False):
        raise UnsupportedQuery("datasets are loaded at the domains; the router lists the "
                               "datasets that every domain federates")

    def drop_dataset(self, name: str) -> None:
        raise UnsupportedQuery("datasets are dropped at the domains, not at the router")

    def run_exact(self, sql: str, dataset: str, *, row_limit: int = 0):
        raise UnsupportedQuery("exact answers cannot be computed at the federation router: "
                               "ask each domain's owner")

    def federated_train(self, spec: Mapping[str, Any], *, analyst: str, rounds: int,
                        purpose: str, sql: str | None = None, dataset: str | None = None,
                        update_clip: float = 10.0):
        """Prepare a federated DP-SGD job (FedAvg with secure aggregation): every domain files
        a pending request for its owner; `.run()` once all approved, `.take_weights()` once.
        See server/router/fedavg_router.py."""
        from server.router.fedavg_router import prepare_training
        return prepare_training(self, spec, analyst=analyst, rounds=rounds, purpose=purpose,
                                sql=sql, dataset=dataset, update_clip=update_clip)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for client in self._clients.values():
            client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ internals

    def _plan(self, sql: str, epsilon: float | None,
              scope: Iterable[str] | None = None) -> FederatedPlan:
        resolver = self._resolver(scope)
        return plan_federated(sql, resolver.resolve_table, resolver.dataset, epsilon,
                              self.federation)

    def _fan_out(self, phase: str, call: Callable[[DomainClient], dict], *,
                 charged_on_success: bool = False) -> dict[str, dict]:
        """Call every domain in parallel; all must answer, else one typed error for all."""
        futures = {name: self._pool.submit(call, self._clients[name])
                   for name in self.federation.parties}
        answers, failures = self._gather(phase, futures)
        if failures:
            raise _combined(phase, failures, answers if charged_on_success else {})
        return answers

    def _gather(self, phase: str, futures: Mapping[str, Any]
                ) -> tuple[dict[str, dict], dict[str, SqlgateError]]:
        """Wait for every domain's call (in the futures' order): (answers, failures) by
        domain. Every answer goes to the observer, as received."""
        answers: dict[str, dict] = {}
        failures: dict[str, SqlgateError] = {}
        for name, future in futures.items():
            try:
                answers[name] = future.result()
            except SqlgateError as err:
                failures[name] = err
            except Exception:  # a bug or transport fault: never echo its text
                failures[name] = FederationFailed(f"domain '{name}' failed unexpectedly",
                                                  details={"domain": name})
            if name in answers and self.observer is not None:
                self.observer(phase, name, answers[name])
        return answers, failures


def _combined(phase: str, failures: Mapping[str, SqlgateError],
              charged: Mapping[str, Any]) -> SqlgateError:
    """The first failing domain's error (in party order), with who failed and who charged."""
    first = next(iter(failures.values()))
    first.details = dict(first.details)
    first.details["failed_domains"] = sorted(failures)
    if phase == "share":
        first.details["charged_domains"] = sorted(charged)
        first.hint = ("nothing was released; domains that already charged their ledger stay "
                      "charged (charge before release, no refunds)")
    elif phase == "prepare":
        first.hint = first.hint or "nothing was released and no domain was charged"
    return first

"""What every front end (HTTP, PG wire, Trino, console) calls: permissions, limits, audit.

A front end authenticates a user, builds a `Caller` and calls this service; it never calls
the Gateway directly for analyst work. The service

* scopes SQL to the datasets the caller may query (others look like missing tables),
* limits each user's concurrent queries,
* writes one audit record per call, whatever the outcome (refusals and errors too), with the
  query as sent and as rewritten, its cost and the rows released, never result values.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from server.audit import AuditEvent, AuditLog, decision_for
from server.auth import User, UserStore
from sqlgate.errors import NotFound, PermissionDenied, TooManyRequests
from sqlgate.results import DPResult, Explanation, OutputColumn

DEFAULT_MAX_CONCURRENT_PER_USER = 4


@dataclass(frozen=True)
class Caller:
    user: User
    channel: str                 # http, pgwire, trino, console, cli
    source: str | None = None    # client address, for the audit log

    @property
    def name(self) -> str:
        return self.user.name


class ConcurrencyLimiter:
    """At most `limit` calls in flight per user; the next one is refused, not queued, so a
    client cannot pile up work on the engine."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self._in_flight: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def slot(self, user: str):
        limiter = self

        class _Slot:
            def __enter__(self):
                with limiter._lock:
                    if limiter._in_flight[user] >= limiter.limit:
                        raise TooManyRequests(
                            f"user '{user}' already has {limiter.limit} queries running; wait "
                            f"for one to finish")
                    limiter._in_flight[user] += 1

            def __exit__(self, *exc):
                with limiter._lock:
                    limiter._in_flight[user] -= 1
                    if not limiter._in_flight[user]:
                        del limiter._in_flight[user]

        return _Slot()


class GatewayService:
    def __init__(self, gateway, users: UserStore, audit: AuditLog, *,
                 max_concurrent_per_user: int = DEFAULT_MAX_CONCURRENT_PER_USER):
        self.gateway = gateway
        self.users = users
        self.audit = audit
        self.limiter = ConcurrencyLimiter(max_concurrent_per_user)

    # ------------------------------------------------------------ scopes

    def queryable(self, caller: Caller) -> set[str]:
        """Names of the datasets `caller` may query (as stored in the catalog)."""
        names = [meta.name for meta in self.gateway.datasets()]
        allowed = {n.lower() for n in self.users.datasets_for(caller.user, "query", names)}
        return {n for n in names if n.lower() in allowed}

    def owned(self, caller: Caller) -> set[str]:
        names = [meta.name for meta in self.gateway.datasets()]
        allowed = {n.lower() for n in self.users.datasets_for(caller.user, "own", names)}
        return {n for n in names if n.lower() in allowed}

    def require(self, caller: Caller, dataset: str, permission: str) -> str:
        """The dataset's stored name if `caller` holds `permission` on it.

        Missing and forbidden datasets answer alike for non-owners of anything, so analysts
        cannot probe for dataset names.
        """
        for meta in self.gateway.datasets():
            if meta.name.lower() == str(dataset).lower():
                if self.users.can(caller.user, meta.name, permission):
                    return meta.name
                if self.users.can(caller.user, meta.name, "query"):
                    raise PermissionDenied(f"'{caller.name}' may not {_verb(permission)} "
                                           f"dataset '{meta.name}'")
                break
        raise NotFound(f"dataset '{dataset}' does not exist")

    def datasets(self, caller: Caller) -> list:
        visible = self.queryable(caller)
        return [meta for meta in self.gateway.datasets() if meta.name in visible]

    # ------------------------------------------------------------ analyst calls

    def query(self, caller: Caller, sql: str, *, epsilon: float | None = None,
              cancel: threading.Event | None = None) -> DPResult:
        with self._audited(caller, "query", sql) as record:
            with self.limiter.slot(caller.name):
                result = self.gateway.query(sql, analyst=caller.name, epsilon=epsilon,
                                            cancel=cancel, scope=self.queryable(caller))
            record.update(dataset=result.dataset, rewritten=result.rewritten_sql,
                          epsilon=0.0 if result.cached else result.cost.epsilon,
                          delta=0.0 if result.cached else result.cost.delta,
                          rows_out=len(result.rows),
                          details={"query_id": result.query_id, "cached": result.cached})
            return result

    def explain(self, caller: Caller, sql: str, *, epsilon: float | None = None) -> Explanation:
        with self._audited(caller, "explain", sql) as record:
            explanation = self.gateway.explain(sql, analyst=caller.name, epsilon=epsilon,
                                               scope=self.queryable(caller))
            record.update(dataset=explanation.dataset, rewritten=explanation.rewritten_sql)
            return explanation

    def describe(self, caller: Caller, sql: str) -> list[OutputColumn]:
        """Output columns only: never audited as a release, never touches data or budget."""
        return self.gateway.describe(sql, scope=self.queryable(caller))

    def budget(self, caller: Caller, dataset: str):
        name = self.require(caller, dataset, "query")
        return self.gateway.budget(caller.name, name)

    def budgets(self, caller: Caller) -> list:
        return [self.gateway.budget(caller.name, name) for name in sorted(self.queryable(caller))]

    # ------------------------------------------------------------ audit

    def record(self, caller: Caller | None, action: str, decision: str, **fields: Any) -> int:
        """Append one audit record for something a front end did itself (login, upload...)."""
        return self.audit.append(AuditEvent(
            channel=caller.channel if caller else fields.pop("channel", "unknown"),
            action=action, decision=decision,
            actor=caller.name if caller else fields.pop("actor", None),
            role=caller.user.role if caller else None,
            source=caller.source if caller else fields.pop("source", None), **fields))

    def _audited(self, caller: Caller, action: str, sql: str):
        service = self

        class _Audit:
            def __enter__(self) -> dict:
                self.fields: dict[str, Any] = {}
                return self.fields

            def __exit__(self, exc_type, exc, tb):
                decision, code = decision_for(exc)
                charge = getattr(exc, "sqlgate_charge", None) if exc is not None else None
                if isinstance(charge, dict):
                    # A failed query's cost, as the ledger has it (charged after noise,
                    # refunded before it): the audit of spending then matches the ledger.
                    self.fields.setdefault("dataset", charge["dataset"])
                    self.fields["epsilon"] = charge["epsilon"]
                    self.fields["delta"] = charge["delta"]
                    details = dict(self.fields.get("details") or {})
                    details.update({k: charge[k] for k in ("charge", "reason") if k in charge})
                    self.fields["details"] = details
                service.audit.append(AuditEvent(
                    channel=caller.channel, action=action, decision=decision, actor=caller.name,
                    role=caller.user.role, source=caller.source, query=sql
                    if isinstance(sql, str) else None, code=code, **self.fields))
                return False

        return _Audit()


def _verb(permission: str) -> str:
    return {"own": "manage", "query": "query"}.get(permission, permission)

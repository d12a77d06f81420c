"""The durable ledger interface: budget overrides, charges, refunds and cached answers.

A ledger only stores and locks; the budget policy lives in `Accountant`, which passes a
`decide` callback to `Ledger.charge`. The ledger calls it *inside* the transaction that holds
the per-(analyst, dataset) write lock, with the override and the sums read under that lock,
and inserts the charge only if the callback returns. That makes "re-check + insert" one
atomic step across threads and processes (privacy rule 4).

Reserve, then release or refund. The gateway charges (reserves) while the engine runs and,
if the query fails before any noise touched data, refunds: a durable row in `refunds` that
takes the charge out of every sum (spent, queries) while the charge itself stays in the log
and in `history`, marked refunded with a public reason. A charge with a recorded answer can
never be refunded, and a refunded charge never gets an answer. A crash between the reserve
and the refund leaves the analyst charged for nothing: conservative, never an overspend.

Tables (same in every backend; creation is idempotent, so older ledgers gain `refunds` when
opened; code that predates refunds ignores that table and so over-counts, never under-counts):
  budgets (analyst, dataset, epsilon, delta, set_by, set_at)  -- owner overrides, one per pair
  charges (id, analyst, dataset, measure, epsilon, delta, rho, query_key, query_text, created_at)
                                                              -- append-only
  refunds (charge_id, reason, refunded_at)                    -- append-only, one per charge
  answers (charge_id, analyst, dataset, query_key, answer, created_at)
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable

from accountant.budget import Spent
from sqlgate.errors import InvalidParameter
from sqlgate.metadata import Budget


@dataclass(frozen=True)
class ChargeRequest:
    analyst: str
    dataset: str
    measure: str
    epsilon: float
    delta: float
    rho: float
    query_key: str | None = None
    query_text: str | None = None


# Called under the lock with (override or None, spent so far); raises to refuse the charge.
Decide = Callable[[Budget | None, Spent], None]

HISTORY_FIELDS = ("id", "analyst", "dataset", "measure", "epsilon", "delta", "rho",
                  "query_key", "query_text", "created_at", "refunded_at", "refund_reason")

# Public reasons the gateway gives for a refund (free text is allowed; these are the usual).
REFUND_REASONS = ("engine failed", "cancelled", "timeout", "dataset replaced",
                  "failed before noise")


class Ledger(abc.ABC):
    """Durable, concurrency-safe store behind `Accountant`."""

    @abc.abstractmethod
    def get_override(self, analyst: str, dataset: str) -> Budget | None:
        """The owner's durable budget override, if any."""

    @abc.abstractmethod
    def set_override(self, analyst: str, dataset: str, budget: Budget, set_by: str) -> None:
        """Insert or replace the override (takes the same lock as `charge`)."""

    @abc.abstractmethod
    def snapshot(self, analyst: str, dataset: str) -> tuple[Budget | None, Spent]:
        """Override and spent sums read in one consistent read; writes nothing."""

    @abc.abstractmethod
    def charge(self, request: ChargeRequest, decide: Decide, answer: bytes | None = None) -> int:
        """Lock (analyst, dataset), read, call `decide`, insert, commit; returns the charge id.
        If `decide` raises, nothing is written and the exception propagates. With `answer`,
        the answer is stored in the same transaction (one commit, one fsync, instead of two):
        the caller has computed it but must not release it before this returns. Durable
        (fsynced) when it returns."""

    def try_begin_charge(self, request: ChargeRequest, decide: Decide
                         ) -> Callable[[], int] | None:
        """Start `charge` on the calling thread if that needs no waiting: take the lock, read,
        call `decide` (its exception propagates, nothing written) and insert, but do not
        commit; return the function that commits and returns the charge id, to be called
        exactly once, from any thread (the gateway runs it on a worker while its engine
        runs, so the commit's fsync costs no time). Until then this thread's later calls on
        the ledger first finish that commit. None (the default) when the lock is busy or
        the backend does not split charges: the caller then makes the whole `charge` later.
        """
        return None

    @abc.abstractmethod
    def refund(self, charge_id: int, reason: str) -> None:
        """Mark a charge refunded (durably): it no longer counts in spent or queries, and
        `history` shows it with `refunded_at` and `refund_reason`. NotFound for an unknown
        charge; Conflict if it is already refunded or has a recorded answer (something was
        released under it)."""

    @abc.abstractmethod
    def record_answer(self, charge_id: int, answer: bytes) -> None:
        """Store the released answer of a charge (once per charge; Conflict if refunded).

        Its own transaction, committed without waiting for a sync of its own: an OS crash
        or power loss may lose it (never the charge, which committed durably before), and
        a lost answer only means an identical repeat is charged again (conservative)."""

    @abc.abstractmethod
    def cached_answer(self, analyst: str, dataset: str, query_key: str) -> bytes | None:
        """The most recent answer recorded for exactly this (analyst, dataset, query_key)."""

    def lookup(self, analyst: str, dataset: str, query_key: str
               ) -> tuple[bytes | None, Budget | None, Spent | None]:
        """(cached answer, override, spent) for a query about to run. When an answer is
        cached, override and spent are not read (None, None). Backends may do it in one
        read transaction; this default makes two reads."""
        cached = self.cached_answer(analyst, dataset, query_key)
        if cached is not None:
            return cached, None, None
        override, spent = self.snapshot(analyst, dataset)
        return None, override, spent

    @abc.abstractmethod
    def history(self, analyst: str | None = None, dataset: str | None = None) -> list[dict]:
        """Charges in id order, refunded ones included, as dicts with HISTORY_FIELDS
        (created_at, refunded_at as ISO 8601 text; refunded_at and refund_reason None unless
        the charge was refunded)."""

    def close(self) -> None:
        """Release resources; the default ledgers hold none between calls."""


def history_filter(analyst: str | None, dataset: str | None,
                   placeholder: str) -> tuple[str, tuple]:
    """` WHERE ...` (or nothing) and its parameters for a history query over `charges c`,
    in the driver's parameter style (`?` for SQLite, `%s` for psycopg)."""
    clauses, params = [], []
    for column, value in (("analyst", analyst), ("dataset", dataset)):
        if value is not None:
            clauses.append(f"c.{column} = {placeholder}")
            params.append(value)
    return ((" WHERE " + " AND ".join(clauses)) if clauses else ""), tuple(params)


# History: every charge with its refund, if any (both backends; `c` is filtered by
# history_filter). Columns in HISTORY_FIELDS order.
HISTORY_SQL = ("SELECT c.id, c.analyst, c.dataset, c.measure, c.epsilon, c.delta, c.rho, "
               "c.query_key, c.query_text, c.created_at, r.refunded_at, r.reason "
               "FROM charges c LEFT JOIN refunds r ON r.charge_id = c.id")


def check_reason(reason: str) -> str:
    """A refund reason is short public text (never data); refused otherwise."""
    if not isinstance(reason, str) or not reason.strip() or len(reason) > 200:
        raise InvalidParameter("a refund needs a short, non-empty reason")
    return reason.strip()

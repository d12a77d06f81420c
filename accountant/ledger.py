"""The durable ledger interface: budget overrides, charges and cached answers.

A ledger only stores and locks; the budget policy lives in `Accountant`, which passes a
`decide` callback to `Ledger.charge`. The ledger calls it *inside* the transaction that holds
the per-(analyst, dataset) write lock, with the override and the sums read under that lock,
and inserts the charge only if the callback returns. That makes "re-check + insert" one
atomic step across threads and processes (privacy rule 4).

Tables (same in every backend; creation is idempotent):
  budgets (analyst, dataset, epsilon, delta, set_by, set_at)  -- owner overrides, one per pair
  charges (id, analyst, dataset, measure, epsilon, delta, rho, query_key, query_text, created_at)
                                                              -- append-only
  answers (charge_id, analyst, dataset, query_key, answer, created_at)
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable

from accountant.budget import Spent
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
                  "query_key", "query_text", "created_at")


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
        the caller has computed it but must not release it before this returns."""

    @abc.abstractmethod
    def record_answer(self, charge_id: int, answer: bytes) -> None:
        """Store the released answer of a charge (once per charge)."""

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
        """Charges in id order, as dicts with HISTORY_FIELDS (created_at as ISO 8601 text)."""

    def close(self) -> None:
        """Release resources; the default ledgers hold none between calls."""


def history_filter(analyst: str | None, dataset: str | None,
                   placeholder: str) -> tuple[str, tuple]:
    """` WHERE ...` (or nothing) and its parameters for a history query, in the driver's
    parameter style (`?` for SQLite, `%s` for psycopg)."""
    clauses, params = [], []
    for column, value in (("analyst", analyst), ("dataset", dataset)):
        if value is not None:
            clauses.append(f"{column} = {placeholder}")
            params.append(value)
    return ((" WHERE " + " AND ".join(clauses)) if clauses else ""), tuple(params)

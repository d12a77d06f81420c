"""Review of the engine performance changes: defects found, each pinned by a test.

1. The SQLite ledger keeps one connection per thread. A COMMIT that fails (an I/O error, a
   full disk) used to leave that connection's transaction open: the thread then saw its own
   uncommitted charge and answer as if committed, could never begin another transaction,
   and held SQLite's write lock, so every other thread and process was refused ("ledger
   busy") until the thread ended.
2. Noise is drawn before the charge; a failure after that is charged before its error
   propagates. When that charge was refused (the budget spent meanwhile by a concurrent
   query), the BudgetExhausted carried the failure as its implicit context (`__context__`,
   shown by tracebacks and by front ends that log causes): a failure that can depend on
   the noisy values reached the analyst without any charge.
"""
from __future__ import annotations

import sqlite3
import threading

import pytest

from accountant import PrivacyCost, SqliteLedger
from accountant.ledger import ChargeRequest
from sqlgate.errors import BudgetExhausted, Conflict
from tests.security.sentinel import ErrorSurface, build_gateway


class _CommitFailsOnce:
    """The thread's ledger connection, whose next COMMIT fails as an I/O error makes it."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn
        self.failed = False

    def execute(self, sql: str, *args):
        if not self.failed and sql.strip().upper() == "COMMIT":
            self.failed = True
            raise sqlite3.OperationalError("disk I/O error")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def _request(query_key: str) -> ChargeRequest:
    return ChargeRequest("bob", "hospital", "pure", 0.5, 0.0, 0.0, query_key, "SELECT 1")


def _allow(override, spent) -> None:
    return None


def _charge_in_other_thread(ledger: SqliteLedger, query_key: str):
    outcome: list = []

    def run():
        try:
            outcome.append(ledger.charge(_request(query_key), _allow, answer=b"other"))
        except Exception as err:  # noqa: BLE001 - reported to the test below
            outcome.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert outcome, "the other thread's charge did not finish"
    return outcome[0]


def test_failed_commit_leaves_no_open_transaction(tmp_path):
    # A short busy timeout: a write lock left held shows up as a refusal, not a long wait.
    ledger = SqliteLedger(tmp_path / "ledger.db", busy_timeout_s=0.5)
    ledger.charge(_request("k0"), _allow, answer=b"first")  # opens this thread's connection
    flaky = _CommitFailsOnce(ledger._local.conn)
    ledger._local.conn = flaky

    with pytest.raises((sqlite3.OperationalError, Conflict)):
        ledger.charge(_request("k1"), _allow, answer=b"never committed")
    assert flaky.failed

    # Another thread can still write: the failed transaction released the write lock.
    other = _charge_in_other_thread(ledger, "k2")
    assert isinstance(other, int), f"other thread refused: {other!r}"
    # This thread does not see the failed charge or its answer, and can charge again.
    assert ledger.cached_answer("bob", "hospital", "k1") is None
    assert [row["query_key"] for row in ledger.history("bob", "hospital")] == ["k0", "k2"]
    _, spent = ledger.snapshot("bob", "hospital")
    assert spent.pure_epsilon == pytest.approx(1.0)
    ledger.charge(_request("k3"), _allow, answer=b"third")
    assert ledger.cached_answer("bob", "hospital", "k3") == b"third"


def test_refused_charge_after_noise_hides_the_failure():
    gw = build_gateway()
    try:
        sql = "SELECT COUNT(*) FROM people"
        real_postprocess = gw._postprocess

        def fail(planned, release_plan, noisy):
            raise ValueError(f"noisy count was {noisy.column(0)[0].as_py()} NOISY-MARK")

        # A concurrent query spends what is left after this query's pre-check, and the
        # ledger's lock is busy when it reserves, so its whole charge runs on a worker while
        # the engine runs (sqlgate/charge_ahead.py) and is refused there; meanwhile
        # post-processing fails on the noisy values.
        left = gw.budget("eve", "hr").remaining_epsilon
        gw.accountant.charge("eve", "hr", PrivacyCost("pure", left))
        real_lookup = gw.accountant.cached_or_check
        real_begin = gw.accountant.ledger.try_begin_charge
        gw.accountant.cached_or_check = lambda *a, **k: None
        gw.accountant.ledger.try_begin_charge = lambda *a, **k: None
        gw._postprocess = fail
        try:
            with pytest.raises(BudgetExhausted) as caught:
                gw.query(sql, analyst="eve", epsilon=0.5)
        finally:
            gw._postprocess = real_postprocess
            gw.accountant.cached_or_check = real_lookup
            gw.accountant.ledger.try_begin_charge = real_begin
        assert caught.value.__context__ is None and caught.value.__cause__ is None
        for text in ErrorSurface.of(caught.value).texts:
            assert "NOISY-MARK" not in text, text[:300]
    finally:
        gw.close()

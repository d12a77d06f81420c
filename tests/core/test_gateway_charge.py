"""Gateway.query charges (reserves) while the engine runs and refunds exactly when the query
fails before noise touched data: engine error, timeout, cancel, dataset replaced (that one is
in tests/core/test_gateway.py). A failure after noise is charged; a reservation refused for
budget drops whatever the engine did; the answer is stored after the charge and identical
repeats stay free; concurrent failing and succeeding queries never overspend; a crash
between reserve and refund over-charges only."""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import pytest

from accountant import Accountant, SqliteLedger
from sqlgate.errors import BudgetExhausted, ExecutionFailed, QueryCanceled, UnsupportedQuery
from sqlgate.metadata import Budget

from tests.core.conftest import people_frame, people_metadata

SQL = "SELECT region, COUNT(*) AS n FROM people GROUP BY region"
WAIT_S = 30


def _history(gateway, analyst):
    return gateway.accountant.history(analyst, "town")


def _assert_refunded(gateway, analyst, reason):
    [charge] = _history(gateway, analyst)
    assert charge["refund_reason"] == reason and charge["refunded_at"]
    status = gateway.budget(analyst, "town")
    assert status.queries == 0 and status.spent_epsilon == 0
    assert gateway.accountant.cached_answer(analyst, "town", charge["query_key"]) is None


def _engine_raising(gateway, monkeypatch, error):
    def run(sql, **kwargs):
        raise error

    monkeypatch.setattr(gateway.executor, "run", run)


def test_the_charge_commits_while_the_engine_runs(gateway, monkeypatch):
    """The reservation is committed before the engine finishes (not charged after it):
    another connection sees the charge while the engine is still running."""
    other = Accountant(SqliteLedger(gateway.accountant.ledger.path))
    original_run = gateway.executor.run
    seen_during_engine = []

    def run(sql, **kwargs):
        for _ in range(WAIT_S * 1000):
            if other.history("a", "town"):
                seen_during_engine.append(True)
                break
            threading.Event().wait(0.001)
        else:
            seen_during_engine.append(False)
        return original_run(sql, **kwargs)

    monkeypatch.setattr(gateway.executor, "run", run)
    result = gateway.query(SQL, analyst="a", epsilon=1.0)
    assert seen_during_engine == [True]
    assert len(result.rows) == 4 and gateway.budget("a", "town").queries == 1


def test_a_busy_ledger_makes_the_whole_charge_on_the_worker(gateway, monkeypatch):
    """When another writer holds the ledger's lock, the query does not wait for it before
    running: the whole charge (re-check, insert, commit) happens on the worker."""
    import sqlite3

    blocker = sqlite3.connect(gateway.accountant.ledger.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    original_run = gateway.executor.run
    released = []

    def run(sql, **kwargs):
        if not released:
            blocker.execute("COMMIT")   # the engine ran while the lock was held elsewhere
            released.append(1)
        return original_run(sql, **kwargs)

    monkeypatch.setattr(gateway.executor, "run", run)
    try:
        result = gateway.query(SQL, analyst="a", epsilon=1.0)
    finally:
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        blocker.close()
    assert released == [1] and len(result.rows) == 4
    assert gateway.budget("a", "town").queries == 1
    assert not gateway.query(SQL, analyst="b", epsilon=1.0).cached   # lock free: split path
    assert gateway.query(SQL, analyst="a", epsilon=1.0).cached


@pytest.mark.parametrize("error,reason", [
    (ExecutionFailed(), "engine failed"),
    (QueryCanceled("the query exceeded the statement timeout"), "timeout"),
    (QueryCanceled("the query was cancelled"), "cancelled"),
    (RuntimeError("unexpected"), "failed before noise"),
])
def test_a_failure_in_the_engine_refunds_the_reservation(gateway, monkeypatch, error, reason):
    _engine_raising(gateway, monkeypatch, error)
    with pytest.raises(type(error)):
        gateway.query(SQL, analyst="a", epsilon=1.0)
    _assert_refunded(gateway, "a", reason)


def test_a_real_engine_error_is_refunded(gateway, monkeypatch):
    import duckdb

    class Raiser:
        def execute(self, sql):
            raise duckdb.ConversionException("Could not convert string 'secret-42' to INT32")

        def interrupt(self):
            pass

        def close(self):
            pass

    monkeypatch.setattr(gateway.executor, "cursor", lambda: Raiser())
    with pytest.raises(ExecutionFailed) as err:
        gateway.query("SELECT COUNT(*) FROM people", analyst="a", epsilon=1.0)
    assert "secret" not in err.value.message
    _assert_refunded(gateway, "a", "engine failed")


def test_a_cancel_before_and_after_the_engine_is_refunded(gateway, monkeypatch):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(QueryCanceled):
        gateway.query(SQL, analyst="early", epsilon=1.0, cancel=cancel)
    _assert_refunded(gateway, "early", "cancelled")

    late = threading.Event()
    original = gateway.executor.run

    def run_then_cancel(sql, **kwargs):
        result = original(sql, **kwargs)
        late.set()  # the client went away just as the engine finished
        return result

    monkeypatch.setattr(gateway.executor, "run", run_then_cancel)
    with pytest.raises(QueryCanceled):
        gateway.query(SQL, analyst="late", epsilon=1.0, cancel=late)
    _assert_refunded(gateway, "late", "cancelled")


def test_a_real_statement_timeout_is_refunded(gateway, monkeypatch):
    """The executor's own watchdog interrupts the engine at the statement timeout."""
    gateway.statement_timeout_s = 0.05
    original = gateway.executor.run
    # The bounded SQL swapped for one that runs for minutes: the real timeout path.
    slow = "SELECT SUM(range % 7) FROM range(100000000000)"
    monkeypatch.setattr(gateway.executor, "run", lambda sql, **k: original(slow, **k))
    with pytest.raises(QueryCanceled, match="statement timeout"):
        gateway.query(SQL, analyst="slow", epsilon=1.0)
    _assert_refunded(gateway, "slow", "timeout")


def test_a_failure_after_noise_is_charged_not_refunded(gateway, monkeypatch):
    def boom(*args, **kwargs):
        raise UnsupportedQuery("the query's result expressions could not be computed")

    monkeypatch.setattr(gateway, "_postprocess", boom)
    with pytest.raises(UnsupportedQuery):
        gateway.query(SQL, analyst="a", epsilon=1.0)
    [charge] = _history(gateway, "a")
    assert charge["refunded_at"] is None and charge["refund_reason"] is None
    status = gateway.budget("a", "town")
    assert status.queries == 1 and status.spent_epsilon == pytest.approx(1.0)
    assert gateway.accountant.cached_answer("a", "town", charge["query_key"]) is None


@pytest.mark.parametrize("split", [True, False], ids=["lock-free", "lock-busy"])
def test_a_budget_refusal_of_the_reservation_drops_whatever_the_engine_did(
        gateway, monkeypatch, split):
    """Lock free: the re-check runs before the engine and refuses there. Lock busy: the
    whole charge runs on the worker while the engine runs, and its refusal wins."""
    gateway.set_budget("poor", "town", Budget(1.0, 0.0), set_by="test")
    gateway.query(SQL, analyst="poor", epsilon=1.0)
    # The pre-check would refuse; skip it, as when a concurrent query spends the budget
    # between the pre-check and the reservation.
    monkeypatch.setattr(gateway.accountant, "cached_or_check", lambda *a, **k: None)
    if not split:
        monkeypatch.setattr(gateway.accountant.ledger, "try_begin_charge", lambda *a: None)
    ran = []
    original = gateway.executor.run
    monkeypatch.setattr(gateway.executor, "run",
                        lambda sql, **k: ran.append(sql) or original(sql, **k))
    with pytest.raises(BudgetExhausted) as refused:
        gateway.query("SELECT COUNT(*) AS m FROM people", analyst="poor", epsilon=1.0)
    assert bool(ran) == (not split)  # the engine ran only when the refusal came late
    assert refused.value.__context__ is None
    # Whatever the engine did: an engine failure also reports the budget refusal.
    _engine_raising(gateway, monkeypatch, ExecutionFailed())
    with pytest.raises(BudgetExhausted) as refused:
        gateway.query("SELECT COUNT(*) AS k FROM people", analyst="poor", epsilon=1.0)
    assert refused.value.__context__ is None
    assert len(_history(gateway, "poor")) == 1 and gateway.budget("poor", "town").queries == 1


def test_answers_are_stored_after_the_charge_and_repeats_are_free(gateway, monkeypatch):
    first = gateway.query(SQL, analyst="a", epsilon=0.5)
    [charge] = _history(gateway, "a")
    assert gateway.accountant.cached_answer("a", "town", charge["query_key"]) is not None
    again = gateway.query(SQL, analyst="a", epsilon=0.5)
    assert again.cached and again.rows == first.rows
    assert gateway.budget("a", "town").queries == 1

    # A failed cache write does not cost the analyst the answer they paid for; the next
    # identical query is simply charged again.
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(gateway.accountant, "record_answer", broken)
    fresh = gateway.query(SQL, analyst="b", epsilon=0.5)
    assert not fresh.cached and len(fresh.rows) == 4
    monkeypatch.undo()
    assert not gateway.query(SQL, analyst="b", epsilon=0.5).cached
    assert gateway.budget("b", "town").queries == 2


def test_a_failed_refund_leaves_the_charge_and_reports_the_query_error(gateway, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("ledger unavailable")

    monkeypatch.setattr(gateway.accountant, "refund", broken)
    _engine_raising(gateway, monkeypatch, ExecutionFailed())
    with pytest.raises(ExecutionFailed):
        gateway.query(SQL, analyst="a", epsilon=1.0)
    [charge] = _history(gateway, "a")
    assert charge["refunded_at"] is None                    # over-charged: the safe side
    assert gateway.budget("a", "town").queries == 1


def test_concurrent_failing_and_succeeding_queries_never_overspend(gateway, monkeypatch):
    gateway.set_budget("crowd", "town", Budget(5.0, 0.0), set_by="test")
    original = gateway.executor.run

    def run(sql, **kwargs):
        if "age" in sql:  # the failing queries filter on age
            raise ExecutionFailed()
        return original(sql, **kwargs)

    monkeypatch.setattr(gateway.executor, "run", run)
    outcomes: list = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def client(i: int) -> None:
        failing = i % 2 == 0
        where = f"age > {i}" if failing else f"score > {i / 10}"
        barrier.wait(WAIT_S)
        for j in range(3):
            sql = f"SELECT COUNT(*) AS n{j} FROM people WHERE {where}"
            try:
                gateway.query(sql, analyst="crowd", epsilon=0.5)
                outcome = "answered"
            except BudgetExhausted:
                outcome = "exhausted"
            except ExecutionFailed:
                outcome = "failed"
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    answered = outcomes.count("answered")
    assert len(outcomes) == 48 and 0 < answered <= 10
    status = gateway.budget("crowd", "town")
    assert status.queries == answered
    assert status.spent_epsilon == pytest.approx(0.5 * answered) and status.spent_epsilon <= 5.0
    history = _history(gateway, "crowd")
    kept = [h for h in history if h["refunded_at"] is None]
    refunded = [h for h in history if h["refunded_at"] is not None]
    assert len(kept) == answered
    assert {h["refund_reason"] for h in refunded} <= {"engine failed"}
    assert len(refunded) == outcomes.count("failed")


# ---------------------------------------------------------------- crash between reserve and refund


def _query_until_killed(home: str, ready) -> None:
    from sqlgate.gateway import Gateway

    gw = Gateway(home)

    def hang(sql, **kwargs):
        ready.set()
        threading.Event().wait(300)  # the parent kills us here

    gw.executor.run = hang
    gw.query(SQL, analyst="crash", epsilon=1.0)


def test_a_crash_between_reserve_and_refund_leaves_the_charge(tmp_path):
    from sqlgate.gateway import Gateway

    home = tmp_path / "domain"
    with Gateway(home) as gw:
        gw.add_dataset(people_metadata(), {"people": people_frame(n=200)})
    # spawn: this process may hold DuckDB and worker threads that a fork would copy mid-use.
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_query_until_killed, args=(str(home), ready))
    child.start()
    try:
        assert ready.wait(WAIT_S), "the child's engine never started"
        ledger = Accountant(SqliteLedger(home / "ledger.sqlite"))
        for _ in range(WAIT_S * 100):  # the reservation commits while the engine "runs"
            if ledger.history("crash", "town"):
                break
            threading.Event().wait(0.01)
        os.kill(child.pid, signal.SIGKILL)
        child.join(WAIT_S)
    finally:
        if child.is_alive():
            child.kill()
    with Gateway(home) as gw:   # restarted: the analyst is charged for nothing (conservative)
        [charge] = gw.accountant.history("crash", "town")
        assert charge["refunded_at"] is None
        assert gw.budget("crash", "town").queries == 1


# ---------------------------------------------------------------- what a failure cost


def test_a_failure_tells_the_audit_what_it_cost_never_the_analyst(gateway, monkeypatch):
    _engine_raising(gateway, monkeypatch, ExecutionFailed())
    with pytest.raises(ExecutionFailed) as refunded:
        gateway.query(SQL, analyst="a", epsilon=1.0)
    assert refunded.value.sqlgate_charge == {"dataset": "town", "charge": "refunded",
                                             "epsilon": 0.0, "delta": 0.0,
                                             "reason": "engine failed"}
    assert "charge" not in refunded.value.to_dict().get("details", {})
    monkeypatch.undo()

    def boom(*args, **kwargs):
        raise UnsupportedQuery("the query's result expressions could not be computed")

    monkeypatch.setattr(gateway, "_postprocess", boom)
    with pytest.raises(UnsupportedQuery) as charged:
        gateway.query(SQL, analyst="b", epsilon=1.0)
    assert charged.value.sqlgate_charge["charge"] == "charged"
    assert charged.value.sqlgate_charge["epsilon"] == pytest.approx(1.0)
    monkeypatch.undo()

    def broken(*args, **kwargs):
        raise OSError("ledger unavailable")

    monkeypatch.setattr(gateway.accountant, "refund", broken)
    _engine_raising(gateway, monkeypatch, ExecutionFailed())
    with pytest.raises(ExecutionFailed) as kept:
        gateway.query(SQL, analyst="c", epsilon=1.0)
    assert kept.value.sqlgate_charge["charge"] == "kept"
    assert kept.value.sqlgate_charge["epsilon"] == pytest.approx(1.0)

"""Reserve-then-refund under concurrency: queries that fail (reserve, refund) race queries
that succeed (reserve, record the answer) on a 1.0 budget of 0.1 charges. Whatever the
interleaving, what stays charged never exceeds the budget, refunded charges free their
budget for others, and the sums equal the charges that were kept. Threads sharing one
Accountant and separate processes each with their own, on SQLite; threads on PostgreSQL."""
from __future__ import annotations

import math
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor

from accountant import Accountant, Budget, PrivacyCost, SqliteLedger
from sqlgate.errors import BudgetExhausted

CTX = multiprocessing.get_context("fork")
TIMEOUT_S = 120
COST = PrivacyCost("pure", 0.1)


def _open(kind: str, where: str) -> Accountant:
    if kind == "sqlite":
        ledger = SqliteLedger(where)
    else:
        from accountant import PostgresLedger

        ledger = PostgresLedger(where)
    acct = Accountant(ledger)
    acct.register_dataset("hospital", "pure", Budget(1.0, 1e-6))
    return acct


# As sqlgate/charge_ahead.py: commits of begun charges (they hold the lock) never queue
# behind whole charges (which may wait for it).
_POOLS = {True: ThreadPoolExecutor(2), False: ThreadPoolExecutor(4)}


def _one_query(acct: Accountant, fails: bool, n: int) -> tuple[str, int | None]:
    """What Gateway.query does with the ledger: reserve (begun here when the lock is free,
    finished on another thread), then refund or store the answer. Every third query makes
    a one-step charge instead, as the router does."""
    try:
        if n % 3 == 0:
            charge_id = acct.charge("bob", "hospital", COST, query_key=f"k{n}",
                                    query_text="SELECT COUNT(*) FROM t")
        else:
            pending = acct.reserve("bob", "hospital", COST, query_key=f"k{n}",
                                   query_text="SELECT COUNT(*) FROM t")
            charge_id = _POOLS[pending.begun].submit(pending.finish).result(TIMEOUT_S)
    except BudgetExhausted:
        return "exhausted", None
    if fails:
        acct.refund(charge_id, "engine failed")
        return "refunded", charge_id
    acct.record_answer(charge_id, f"answer {n}".encode())
    return "kept", charge_id


def _worker(acct: Accountant, fails: bool, rounds: int, base: int) -> list:
    return [_one_query(acct, fails, base + i) for i in range(rounds)]


def _check(acct: Accountant, outcomes: list) -> None:
    kept = sorted(i for kind, i in outcomes if kind == "kept")
    refunded = sorted(i for kind, i in outcomes if kind == "refunded")
    assert len(kept) <= 10, "overspend: more than the budget stayed charged"
    # Some reservation was refused (only 10 fit), and then 10 were held at once.
    assert len(kept) + len(refunded) >= 10
    status = acct.status("bob", "hospital")
    assert status.queries == len(kept)
    assert status.spent_epsilon == math.fsum([0.1] * len(kept)) <= 1.0 + 1e-12
    history = acct.history("bob", "hospital")
    assert sorted(h["id"] for h in history if h["refunded_at"] is None) == kept
    assert sorted(h["id"] for h in history if h["refunded_at"] is not None) == refunded
    # every kept charge has its answer; no refunded one has any
    keys = {h["id"]: h["query_key"] for h in history}
    assert all(acct.cached_answer("bob", "hospital", keys[i]) for i in kept)
    assert not any(acct.cached_answer("bob", "hospital", keys[i]) for i in refunded)


def _race_threads(acct: Accountant, failing: int, succeeding: int, rounds: int) -> list:
    barrier = threading.Barrier(failing + succeeding)
    outcomes: list = []
    errors: list = []
    lock = threading.Lock()

    def work(index: int) -> None:
        fails = index < failing
        try:
            barrier.wait(timeout=TIMEOUT_S)
            got = _worker(acct, fails, rounds if fails else 1, index * 1000)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(repr(exc))
            return
        with lock:
            outcomes.extend(got)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(failing + succeeding)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "threads hung"
    assert not errors, errors[:3]
    return outcomes


def test_threads_failing_and_succeeding_never_overspend_sqlite(tmp_path):
    acct = _open("sqlite", str(tmp_path / "ledger.db"))
    _check(acct, _race_threads(acct, failing=20, succeeding=40, rounds=5))


def test_threads_failing_and_succeeding_never_overspend_postgres(pg_dsn):
    acct = _open("postgres", pg_dsn)
    _check(acct, _race_threads(acct, failing=10, succeeding=20, rounds=4))


def _child(path: str, index: int, failing: int, barrier, queue) -> None:
    global _POOLS
    _POOLS = {True: ThreadPoolExecutor(1), False: ThreadPoolExecutor(2)}  # not the parent's
    try:
        acct = _open("sqlite", path)
        fails = index < failing
        barrier.wait(timeout=TIMEOUT_S)
        queue.put(("ok", _worker(acct, fails, 5 if fails else 1, index * 1000)))
    except Exception as exc:
        queue.put(("error", repr(exc)))


def test_processes_failing_and_succeeding_never_overspend_sqlite(tmp_path):
    path = str(tmp_path / "ledger.db")
    acct = _open("sqlite", path)  # creates the file before the race
    n, failing = 30, 10
    barrier = CTX.Barrier(n)
    queue = CTX.Queue()
    procs = [CTX.Process(target=_child, args=(path, i, failing, barrier, queue))
             for i in range(n)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=TIMEOUT_S) for _ in range(n)]
    for p in procs:
        p.join(TIMEOUT_S)
        if p.is_alive():
            p.kill()
    errors = [r for r in results if r[0] == "error"]
    assert not errors, errors[:3]
    _check(acct, [o for _, got in results for o in got])

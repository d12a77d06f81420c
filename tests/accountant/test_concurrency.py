"""Concurrent charges never overspend; committed charges survive SIGKILL.

A 1.0 budget and charges of 0.1: exactly 10 of N concurrent charges may succeed, whether they
come from threads sharing one Accountant or from separate processes each with its own.
"""
from __future__ import annotations

import math
import multiprocessing
import os
import random
import signal
import sqlite3
import threading
import time

import pytest

from accountant import Accountant, Budget, PrivacyCost, SqliteLedger
from sqlgate.errors import BudgetExhausted

# fork: children start in milliseconds (spawn would re-import OpenDP in each of ~100 children).
CTX = multiprocessing.get_context("fork")
TIMEOUT_S = 120


def _slow_postgres_ledger(dsn: str):
    """PostgresLedger whose reads take 10 ms, as on a loaded server: without the lock,
    concurrent charges would then surely all read the same sums and overspend."""
    from accountant.postgres_ledger import PostgresLedger

    class SlowReads(PostgresLedger):
        @staticmethod
        def _spent(conn, analyst, dataset):
            spent = PostgresLedger._spent(conn, analyst, dataset)
            time.sleep(0.01)
            return spent

    return SlowReads(dsn)


def _open(spec: tuple[str, str]) -> Accountant:
    kind, where = spec
    if kind == "sqlite":
        ledger = SqliteLedger(where)
    else:
        ledger = _slow_postgres_ledger(where)
    acct = Accountant(ledger)
    acct.register_dataset("hospital", "pure", Budget(1.0, 1e-6))
    return acct


def _race_threads(acct: Accountant, n: int) -> list:
    barrier = threading.Barrier(n)
    results: list = []
    lock = threading.Lock()

    def work():
        barrier.wait(timeout=TIMEOUT_S)
        try:
            outcome = ("ok", acct.charge("bob", "hospital", PrivacyCost("pure", 0.1),
                                         query_text="SELECT COUNT(*) FROM t"))
        except BudgetExhausted:
            outcome = ("exhausted", None)
        except Exception as exc:  # surfaced by the assertion below
            outcome = ("error", repr(exc))
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=work) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "charging threads hung"
    return results


def _charge_once_in_child(spec, barrier, queue) -> None:
    try:
        acct = _open(spec)
        barrier.wait(timeout=TIMEOUT_S)
        try:
            queue.put(("ok", acct.charge("bob", "hospital", PrivacyCost("pure", 0.1))))
        except BudgetExhausted:
            queue.put(("exhausted", None))
    except Exception as exc:
        queue.put(("error", repr(exc)))


def _race_processes(spec, n: int) -> list:
    barrier = CTX.Barrier(n)
    queue = CTX.Queue()
    procs = [CTX.Process(target=_charge_once_in_child, args=(spec, barrier, queue))
             for _ in range(n)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=TIMEOUT_S) for _ in range(n)]
    for p in procs:
        p.join(TIMEOUT_S)
        if p.is_alive():
            p.kill()
    return results


def _assert_exactly_ten(results: list, n: int, acct: Accountant) -> None:
    errors = [r for r in results if r[0] == "error"]
    assert not errors, errors[:3]
    ok = [r[1] for r in results if r[0] == "ok"]
    assert len(results) == n
    assert len(ok) == 10 and len(set(ok)) == 10
    status = acct.status("bob", "hospital")
    assert status.queries == 10 and status.spent_epsilon == 1.0
    assert sorted(h["id"] for h in acct.history("bob", "hospital")) == sorted(ok)


def test_200_threads_exactly_10_succeed(tmp_path):
    acct = _open(("sqlite", str(tmp_path / "ledger.db")))
    _assert_exactly_ten(_race_threads(acct, 200), 200, acct)


def test_100_processes_exactly_10_succeed(tmp_path):
    spec = ("sqlite", str(tmp_path / "ledger.db"))
    acct = _open(spec)  # creates the file before the race
    _assert_exactly_ten(_race_processes(spec, 100), 100, acct)


@pytest.mark.parametrize("server_default", [None, "repeatable read"])
def test_postgres_200_threads_exactly_10_succeed(pg_dsn, server_default):
    """Also with a server whose default isolation would take the snapshot before the lock:
    the ledger pins READ COMMITTED."""
    if server_default:
        from psycopg.conninfo import make_conninfo

        escaped = server_default.replace(" ", "\\ ")
        pg_dsn = make_conninfo(pg_dsn, options=f"-c default_transaction_isolation={escaped}")
    acct = _open(("postgres", pg_dsn))
    _assert_exactly_ten(_race_threads(acct, 200), 200, acct)


def test_postgres_50_processes_exactly_10_succeed(pg_dsn):
    spec = ("postgres", pg_dsn)
    acct = _open(spec)
    _assert_exactly_ten(_race_processes(spec, 50), 50, acct)


# ------------------------------------------------------------------ crash safety


def _charge_forever(path: str, fd: int) -> None:
    acct = Accountant(SqliteLedger(path))
    acct.register_dataset("hospital", "pure", Budget(1e9))
    while True:
        charge_id = acct.charge("bob", "hospital", PrivacyCost("pure", 0.001),
                                query_key="k", query_text="SELECT COUNT(*) FROM t")
        os.write(fd, f"{charge_id}\n".encode())  # only after COMMIT returned


def _read_ids(fd: int, until: int | None) -> list[int]:
    buf = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        if until is not None and buf.count(b"\n") >= until:
            break
    lines = buf.split(b"\n")
    return [int(x) for x in lines if x]  # the last, partial line cannot be cut: PIPE_BUF writes


@pytest.mark.parametrize("round_", range(3))
def test_sigkill_mid_load_loses_no_committed_charge(tmp_path, round_):
    path = str(tmp_path / "ledger.db")
    SqliteLedger(path)
    reported: list[int] = []
    rng = random.Random(round_)
    for _ in range(2):  # kill twice on the same file: recovery of a recovered ledger too
        read_fd, write_fd = os.pipe()
        child = CTX.Process(target=_charge_forever, args=(path, write_fd))
        child.start()
        os.close(write_fd)
        try:
            first = _read_ids(read_fd, until=20 + rng.randrange(30))
            time.sleep(rng.random() * 0.005)  # land somewhere inside a transaction
            os.kill(child.pid, signal.SIGKILL)
            child.join(TIMEOUT_S)
            rest = _read_ids(read_fd, until=None)  # whatever was written before the kill
        finally:
            os.close(read_fd)
            if child.is_alive():
                child.kill()
        assert child.exitcode == -signal.SIGKILL
        reported += first + rest

    acct = Accountant(SqliteLedger(path))  # reopen, as a restarted gateway would
    acct.register_dataset("hospital", "pure", Budget(1e9))
    present = [h["id"] for h in acct.history("bob", "hospital")]
    assert set(reported) <= set(present), "a charge reported committed was lost"
    # at most one charge per kill was committed but not yet reported
    assert len(present) - len(reported) <= 2
    status = acct.status("bob", "hospital")
    assert status.queries == len(present)
    assert status.spent_epsilon == math.fsum([0.001] * len(present))
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    acct.charge("bob", "hospital", PrivacyCost("pure", 0.001))  # still usable

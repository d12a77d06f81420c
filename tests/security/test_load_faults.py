"""Load and faults against a real `sqlgate serve` process on loopback.

* 200 concurrent clients, 160 over HTTP and 40 over PG wire (200 each in the slow variant:
  a PG login costs the server ~0.4 s of CPU today), ten analysts of whom only
  five have budget for 5 queries each: exactly 25 queries are answered, every other client
  is refused for budget (after retrying the per-user concurrency limit), nothing is
  overspent, and ledger and audit log agree with what the clients saw.
* SIGKILL under load, then restart on the same home: the audit chain verifies, every answer
  a client received has its audit record and its ledger charge, every audited answer has
  its charge, budgets survived, and the restarted server answers again.
"""
from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from accountant import SqliteLedger
from server.audit import AuditLog
from tests._require import require_module
from tests.security.live import LiveServer, prepare_home

EPSILON = 0.1


class Refused(Exception):
    """The server refused for budget (the expected end of a client with no budget left)."""


class Busy(Exception):
    """The per-user concurrency limit: retry."""


def _http_query(client: httpx.Client, sql: str) -> dict:
    response = client.post("/v1/query", json={"sql": sql, "epsilon": EPSILON})
    if response.status_code == 200:
        return response.json()
    error = response.json()["error"]
    if response.status_code == 429:
        raise Busy()
    if response.status_code == 402:
        raise Refused(error["code"])
    raise AssertionError(f"unexpected HTTP {response.status_code}: {response.text[:300]}")


def _pg_query(conn, sql: str) -> list:
    psycopg = require_module("psycopg")
    try:
        return conn.execute(sql).fetchall()
    except psycopg.Error as err:
        state = err.sqlstate
        if state == "53300":
            raise Busy() from None
        if state == "53400":
            raise Refused(state) from None
        raise AssertionError(f"unexpected SQLSTATE {state}: {err}") from None


def _pg_connect(server, analyst):
    psycopg = require_module("psycopg")
    conn = psycopg.connect(server.dsn(analyst), autocommit=True)
    conn.execute(f"SET sqlgate.epsilon = {EPSILON}")
    return conn


def _with_retries(send, sql: str):
    """Retry while the per-user limit refuses; return the answer or raise Refused."""
    delay = 0.005
    while True:
        try:
            return send(sql)
        except Busy:
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 1.5, 0.2)


def _ledger(home) -> SqliteLedger:
    return SqliteLedger(str(home / "ledger.sqlite"))


def _integrity(path) -> str:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def _run_budget_race(tmp_path, clients: int, pg_clients: int, analysts: int, funded: int,
                     per_funded: int):
    require_module("psycopg")
    budgets = {f"a{i}": (per_funded * EPSILON if i < funded else EPSILON / 2)
               for i in range(analysts)}
    home = tmp_path / "home"
    accounts = prepare_home(home, budgets)
    server = LiveServer.start(home, "--max-concurrent", "8")
    names = sorted(accounts)
    start = threading.Barrier(clients)

    def client(i: int):
        analyst = accounts[names[i % analysts]]
        over_pg = i // analysts < pg_clients // analysts  # every analyst uses both
        sql = f"SELECT COUNT(*) FROM people WHERE age > {i % 90} AND salary > {i}"
        if over_pg:
            conn = _pg_connect(server, analyst)
            send = lambda q: _pg_query(conn, q)  # noqa: E731
        else:
            conn = httpx.Client(base_url=server.url, timeout=120,
                                headers={"Authorization": f"Bearer {analyst.token}"})
            send = lambda q: _http_query(conn, q)  # noqa: E731
        try:
            start.wait(600)  # all connected (PG logins are slow, see the report)
            try:
                _with_retries(send, sql)
                return analyst.name, "pg" if over_pg else "http", "answered"
            except Refused:
                return analyst.name, "pg" if over_pg else "http", "refused"
        finally:
            conn.close()

    try:
        with ThreadPoolExecutor(clients) as pool:
            outcomes = list(pool.map(client, range(clients)))
        answered = Counter(name for name, _, result in outcomes if result == "answered")
        channels = Counter(channel for _, channel, result in outcomes if result == "answered")
        assert server.alive()
        # Exactly the budgets' worth was answered, per analyst; the rest refused.
        for name in names:
            expected = per_funded if int(name[1:]) < funded else 0
            assert answered[name] == expected, (name, answered)
        assert sum(answered.values()) == funded * per_funded
        assert set(channels) <= {"http", "pg"}
        ledger = _ledger(server.home)
        for name in names:
            charges = ledger.history(name, "hr")
            assert len(charges) == answered[name]
            assert sum(c["epsilon"] for c in charges) <= budgets[name] * (1 + 1e-9)
        audit = AuditLog.in_home(server.home)
        ok = audit.records(action="query", decision="ok", limit=10_000)
        assert Counter(r["actor"] for r in ok) == answered
        assert audit.verify().ok
    finally:
        server.stop()


def test_200_clients_get_exactly_the_budgeted_answers(tmp_path):
    _run_budget_race(tmp_path, clients=200, pg_clients=40, analysts=10, funded=5, per_funded=5)


@pytest.mark.slow
def test_400_clients_budget_race_long(tmp_path):
    _run_budget_race(tmp_path, clients=400, pg_clients=200, analysts=20, funded=10,
                     per_funded=12)


# ---------------------------------------------------------------- SIGKILL under load


def _load_until_killed(server, accounts, clients: int, stop: threading.Event, seen: list,
                       cycle: int = 0):
    """Clients loop on distinct queries until the server dies; `seen` gets
    (analyst, channel, sql, query_id or None) for every answer a client received."""
    names = sorted(accounts)
    lock = threading.Lock()

    def client(i: int):
        analyst = accounts[names[i % len(names)]]
        over_pg = i % 2 == 1
        try:
            if over_pg:
                conn = _pg_connect(server, analyst)
            else:
                conn = httpx.Client(base_url=server.url, timeout=30,
                                    headers={"Authorization": f"Bearer {analyst.token}"})
        except Exception:  # noqa: BLE001 - the server may already be gone
            return
        j = 0
        try:
            while not stop.is_set():
                sql = (f"SELECT COUNT(*), SUM(salary) FROM people WHERE age > {j % 90} "
                       f"AND salary > {cycle * 10**9 + i * 100000 + j}")
                j += 1
                try:
                    if over_pg:
                        _pg_query(conn, sql)
                        query_id = None
                    else:
                        query_id = _http_query(conn, sql)["query_id"]
                except Busy:
                    continue
                with lock:
                    seen.append((analyst.name, "pg" if over_pg else "http", sql, query_id))
        except Exception:  # noqa: BLE001 - connection errors once the server is killed
            return
        finally:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    return threads


def _kill_under_load_and_check(tmp_path, clients: int, answers_before_kill: int, cycles: int):
    require_module("psycopg")
    home = tmp_path / "home"
    accounts = prepare_home(home, {f"k{i}": 1000.0 for i in range(4)})
    all_seen: list = []
    for cycle in range(cycles):
        server = LiveServer.start(home, "--max-concurrent", "8")
        stop, seen = threading.Event(), []
        try:
            threads = _load_until_killed(server, accounts, clients, stop, seen, cycle)
            deadline = time.monotonic() + 120
            while len(seen) < answers_before_kill and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(seen) >= answers_before_kill, "the load never got going"
        finally:
            server.kill()  # SIGKILL: no cleanup, mid-query for some clients
            stop.set()
        for thread in threads:
            thread.join(60)
        all_seen += seen
        _check_consistency(home, accounts, all_seen)
    # The last restart answers on both protocols and budgets are where the ledger says.
    server = LiveServer.start(home)
    try:
        analyst = accounts["k0"]
        spent = sum(c["epsilon"] for c in _ledger(home).history("k0", "hr"))
        with httpx.Client(base_url=server.url, timeout=60,
                          headers={"Authorization": f"Bearer {analyst.token}"}) as http:
            budget = http.get("/v1/budgets").json()["budgets"][0]
            assert budget["spent_epsilon"] == pytest.approx(spent)
            assert _http_query(http, "SELECT COUNT(*) FROM people WHERE age > 1")["rows"]
        conn = _pg_connect(server, analyst)
        try:
            assert _pg_query(conn, "SELECT COUNT(*) FROM people WHERE age > 2")
        finally:
            conn.close()
        assert _check_consistency(home, accounts, all_seen)
    finally:
        server.stop()


def _check_consistency(home, accounts, seen) -> bool:
    assert _integrity(home / "ledger.sqlite") == "ok"
    assert _integrity(home / "audit.sqlite") == "ok"
    audit = AuditLog.in_home(home)
    report = audit.verify()
    assert report.ok, report
    ledger = _ledger(home)
    ok_records = audit.records(action="query", decision="ok", limit=10_000)
    for name in accounts:
        charges = ledger.history(name, "hr")
        charged_sql = Counter(c["query_text"] for c in charges)
        audited = [r for r in ok_records if r["actor"] == name]
        fresh = [r for r in audited if not r["details"]["cached"]]
        received = [s for s in seen if s[0] == name]
        # Charge before release, audit before the reply: charges >= fresh answers audited,
        # and every answer a client saw (fresh or a free repeat) was audited.
        assert len(charges) >= len(fresh), name
        assert len(audited) >= len(received), name
        for record in fresh:
            assert charged_sql[record["query"]] >= 1, "an audited answer without a charge"
        audited_sql = Counter(r["query"] for r in audited)
        for _, _, sql, _ in received:
            assert audited_sql[sql] >= 1 and charged_sql[sql] >= 1, "an answer not on record"
    ids = {r["details"]["query_id"] for r in ok_records}
    assert all(query_id in ids for _, channel, _, query_id in seen if channel == "http")
    return True


def test_sigkill_under_load_keeps_ledger_and_audit_consistent(tmp_path):
    _kill_under_load_and_check(tmp_path, clients=40, answers_before_kill=40, cycles=1)


@pytest.mark.slow
def test_repeated_sigkill_under_heavy_load(tmp_path):
    _kill_under_load_and_check(tmp_path, clients=120, answers_before_kill=300, cycles=4)

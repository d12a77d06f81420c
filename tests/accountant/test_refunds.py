"""Refunds and answers written after the charge, on both ledgers (SQLite file, throwaway
PostgreSQL): a refund takes a charge out of every sum and shows in the history with its
reason; an answered charge cannot be refunded and a refunded one gets no answer; ledgers
made before refunds existed open and gain them."""
import sqlite3
import threading

import pytest

from accountant import Accountant, Budget, PrivacyCost, SqliteLedger
from sqlgate.errors import BudgetExhausted, Conflict, InvalidParameter, NotFound


def _accountant(make_ledger, budget=Budget(1.0, 1e-6)) -> Accountant:
    acct = Accountant(make_ledger())
    acct.register_dataset("hospital", "pure", budget)
    return acct


def test_a_refund_takes_the_charge_out_of_the_budget_and_keeps_it_in_history(make_ledger):
    acct = _accountant(make_ledger)
    cost = PrivacyCost("pure", 0.6, delta=1e-7)
    first = acct.charge("bob", "hospital", cost, query_key="k1", query_text="SELECT 1")
    with pytest.raises(BudgetExhausted):
        acct.charge("bob", "hospital", cost, query_key="k2")
    acct.refund(first, "engine failed")
    status = acct.status("bob", "hospital")
    assert status.queries == 0 and status.spent_epsilon == 0 and status.spent_delta == 0
    second = acct.charge("bob", "hospital", cost, query_key="k2")  # the budget is free again
    assert acct.status("bob", "hospital").queries == 1
    history = acct.history("bob", "hospital")
    assert [h["id"] for h in history] == [first, second]
    assert history[0]["refund_reason"] == "engine failed" and history[0]["refunded_at"]
    assert history[0]["epsilon"] == 0.6 and history[0]["query_text"] == "SELECT 1"
    assert history[1]["refund_reason"] is None and history[1]["refunded_at"] is None
    # durable and visible to a new ledger object (a restarted gateway)
    again = _accountant(make_ledger)
    assert again.status("bob", "hospital").spent_epsilon == pytest.approx(0.6)
    assert [h["refund_reason"] for h in again.history("bob", "hospital")] == ["engine failed", None]


def test_refunds_and_answers_exclude_each_other(make_ledger):
    acct = _accountant(make_ledger)
    cost = PrivacyCost("pure", 0.1)
    answered = acct.charge("bob", "hospital", cost, query_key="k1")
    acct.record_answer(answered, b"released")
    with pytest.raises(Conflict, match="cannot be refunded"):
        acct.refund(answered, "cancelled")                   # something was released under it
    refunded = acct.charge("bob", "hospital", cost, query_key="k2")
    acct.refund(refunded, "timeout")
    with pytest.raises(Conflict, match="already refunded"):
        acct.refund(refunded, "timeout")
    with pytest.raises(Conflict, match="refunded"):
        acct.record_answer(refunded, b"never")
    assert acct.cached_answer("bob", "hospital", "k2") is None
    assert acct.cached_or_check("bob", "hospital", "k1", cost) == b"released"
    with pytest.raises(Conflict):
        acct.record_answer(answered, b"twice")
    with pytest.raises(NotFound):
        acct.refund(10_000, "cancelled")
    with pytest.raises(NotFound):
        acct.record_answer(10_000, b"x")
    for reason in ("", "   ", None, "x" * 201):
        with pytest.raises(InvalidParameter):
            acct.refund(answered + 100, reason)
    with pytest.raises(InvalidParameter):
        acct.refund("1", "cancelled")
    status = acct.status("bob", "hospital")
    assert status.queries == 1 and status.spent_epsilon == pytest.approx(0.1)


def test_answer_after_the_charge_serves_free_repeats(make_ledger):
    acct = _accountant(make_ledger)
    cost = PrivacyCost("pure", 0.4)
    assert acct.cached_or_check("bob", "hospital", "k", cost) is None
    charge_id = acct.charge("bob", "hospital", cost, query_key="k")
    assert acct.cached_answer("bob", "hospital", "k") is None  # not until recorded
    acct.record_answer(charge_id, b"noisy")
    acct.charge("bob", "hospital", cost, query_key="other")
    # 0.8 spent: nothing new fits, the recorded answer is still served for free
    assert acct.cached_or_check("bob", "hospital", "k", cost) == b"noisy"
    assert acct.cached_or_check("alice", "hospital", "k", cost) is None


# ---------------------------------------------------------------- SQLite specifics


def test_sqlite_answer_commits_unsynced_and_charges_stay_synced(tmp_path):
    ledger = SqliteLedger(tmp_path / "l.db")
    acct = Accountant(ledger)
    acct.register_dataset("hospital", "pure", Budget(1.0))
    charge_id = acct.charge("bob", "hospital", PrivacyCost("pure", 0.1), query_key="k")
    conn = ledger._local.conn
    statements = []
    conn.set_trace_callback(statements.append)
    acct.record_answer(charge_id, b"answer")
    second = acct.charge("bob", "hospital", PrivacyCost("pure", 0.1), query_key="k2")
    acct.refund(second, "engine failed")
    conn.set_trace_callback(None)
    relaxed = statements.index("PRAGMA synchronous = NORMAL")
    assert statements[relaxed + 1].startswith("INSERT INTO answers")  # its own transaction
    assert statements[relaxed + 2] == "PRAGMA synchronous = FULL"
    assert statements.count("PRAGMA synchronous = NORMAL") == 1   # the answer only
    assert statements.index("COMMIT") > relaxed                   # the charge, synced
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
    # A failed answer write also puts FULL back.
    with pytest.raises(Conflict):
        acct.record_answer(charge_id, b"again")
    assert ledger._local.conn.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_sqlite_connection_is_dropped_if_full_sync_cannot_be_restored(tmp_path):
    ledger = SqliteLedger(tmp_path / "l.db")
    acct = Accountant(ledger)
    acct.register_dataset("hospital", "pure", Budget(1.0))
    charge_id = acct.charge("bob", "hospital", PrivacyCost("pure", 0.1), query_key="k")
    real = ledger._local.conn

    class NoFullSync:
        """Passes everything through but fails to restore synchronous=FULL."""

        def __getattr__(self, name):
            return getattr(real, name)

        def execute(self, sql, *args):
            if sql == "PRAGMA synchronous = FULL":
                raise sqlite3.OperationalError("disk I/O error")
            return real.execute(sql, *args)

    ledger._local.conn = NoFullSync()
    with pytest.raises(sqlite3.OperationalError):
        acct.record_answer(charge_id, b"answer")
    assert ledger._local.conn is None                         # never reused unsynced
    acct.charge("bob", "hospital", PrivacyCost("pure", 0.1))   # a fresh, FULL connection
    assert ledger._local.conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert acct.cached_answer("bob", "hospital", "k") == b"answer"


def test_sqlite_refunds_are_append_only(tmp_path):
    ledger = SqliteLedger(tmp_path / "l.db")
    acct = Accountant(ledger)
    acct.register_dataset("hospital", "pure", Budget(1.0))
    acct.refund(acct.charge("bob", "hospital", PrivacyCost("pure", 0.5)), "cancelled")
    conn = sqlite3.connect(ledger.path)
    for statement in ("UPDATE refunds SET reason = 'x'", "DELETE FROM refunds"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(statement)
    conn.close()
    assert acct.status("bob", "hospital").spent_epsilon == 0


# The schema of ledgers written before refunds existed (accountant/sqlite_ledger.py then).
OLD_SQLITE_SCHEMA = [
    """CREATE TABLE budgets (analyst TEXT NOT NULL, dataset TEXT NOT NULL, epsilon REAL NOT NULL,
        delta REAL NOT NULL, set_by TEXT NOT NULL, set_at TEXT NOT NULL,
        PRIMARY KEY (analyst, dataset))""",
    """CREATE TABLE charges (id INTEGER PRIMARY KEY AUTOINCREMENT, analyst TEXT NOT NULL,
        dataset TEXT NOT NULL, measure TEXT NOT NULL CHECK (measure IN ('pure', 'zcdp')),
        epsilon REAL NOT NULL, delta REAL NOT NULL, rho REAL NOT NULL, query_key TEXT,
        query_text TEXT, created_at TEXT NOT NULL)""",
    "CREATE INDEX charges_by_analyst_dataset ON charges (analyst, dataset)",
    """CREATE TABLE answers (charge_id INTEGER PRIMARY KEY REFERENCES charges (id),
        analyst TEXT NOT NULL, dataset TEXT NOT NULL, query_key TEXT, answer BLOB NOT NULL,
        created_at TEXT NOT NULL)""",
    "CREATE INDEX answers_by_key ON answers (analyst, dataset, query_key)",
    """CREATE TRIGGER charges_no_update BEFORE UPDATE ON charges
        BEGIN SELECT RAISE(ABORT, 'privacy charges are append-only'); END""",
    """CREATE TRIGGER charges_no_delete BEFORE DELETE ON charges
        BEGIN SELECT RAISE(ABORT, 'privacy charges are append-only'); END""",
]

OLD_ROWS = [
    "INSERT INTO budgets VALUES ('bob', 'hospital', 2.0, 0.0, 'owner', '2025-01-01T00:00:00')",
    "INSERT INTO charges (analyst, dataset, measure, epsilon, delta, rho, query_key, query_text, "
    "created_at) VALUES ('bob', 'hospital', 'pure', 0.5, 0.0, 0.0, 'k1', 'SELECT 1', "
    "'2025-01-01T00:00:00')",
    "INSERT INTO charges (analyst, dataset, measure, epsilon, delta, rho, query_key, query_text, "
    "created_at) VALUES ('bob', 'hospital', 'pure', 0.25, 0.0, 0.0, 'k2', 'SELECT 2', "
    "'2025-01-01T00:00:01')",
    "INSERT INTO answers VALUES (1, 'bob', 'hospital', 'k1', X'6f6c64', '2025-01-01T00:00:00')",
]


def _check_migrated(acct: Accountant) -> None:
    status = acct.status("bob", "hospital")
    assert status.total.epsilon == 2.0                               # the old override
    assert status.queries == 2 and status.spent_epsilon == pytest.approx(0.75)
    assert acct.cached_answer("bob", "hospital", "k1") == b"old"
    history = acct.history("bob", "hospital")
    assert [(h["id"], h["refund_reason"]) for h in history] == [(1, None), (2, None)]
    acct.refund(2, "dataset replaced")                                # refunds work now
    with pytest.raises(Conflict):
        acct.refund(1, "cancelled")                                   # answered: released
    new = acct.charge("bob", "hospital", PrivacyCost("pure", 1.5), query_key="k3")
    acct.record_answer(new, b"new")
    status = acct.status("bob", "hospital")
    assert status.queries == 2 and status.spent_epsilon == pytest.approx(2.0)


def test_sqlite_ledger_from_before_refunds_is_migrated(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    for statement in OLD_SQLITE_SCHEMA + OLD_ROWS:
        conn.execute(statement)
    conn.commit()
    conn.close()
    acct = Accountant(SqliteLedger(path))
    acct.register_dataset("hospital", "pure", Budget(1.0))
    _check_migrated(acct)
    reopened = Accountant(SqliteLedger(path))                          # idempotent
    reopened.register_dataset("hospital", "pure", Budget(1.0))
    assert [h["refund_reason"] for h in reopened.history("bob", "hospital")] == \
        [None, "dataset replaced", None]
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()


# ---------------------------------------------------------------- PostgreSQL specifics

OLD_POSTGRES_SCHEMA = [
    """CREATE TABLE budgets (analyst TEXT NOT NULL, dataset TEXT NOT NULL,
        epsilon DOUBLE PRECISION NOT NULL, delta DOUBLE PRECISION NOT NULL,
        set_by TEXT NOT NULL, set_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (analyst, dataset))""",
    """CREATE TABLE charges (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        analyst TEXT NOT NULL, dataset TEXT NOT NULL,
        measure TEXT NOT NULL CHECK (measure IN ('pure', 'zcdp')),
        epsilon DOUBLE PRECISION NOT NULL, delta DOUBLE PRECISION NOT NULL,
        rho DOUBLE PRECISION NOT NULL, query_key TEXT, query_text TEXT,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
    "CREATE INDEX charges_by_analyst_dataset ON charges (analyst, dataset)",
    """CREATE TABLE answers (charge_id BIGINT PRIMARY KEY REFERENCES charges (id),
        analyst TEXT NOT NULL, dataset TEXT NOT NULL, query_key TEXT, answer BYTEA NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
    "CREATE INDEX answers_by_key ON answers (analyst, dataset, query_key)",
    """CREATE OR REPLACE FUNCTION sqlgate_charges_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'privacy charges are append-only'; END $$""",
    """CREATE TRIGGER charges_append_only BEFORE UPDATE OR DELETE ON charges
        FOR EACH ROW EXECUTE FUNCTION sqlgate_charges_append_only()""",
]


def test_postgres_ledger_from_before_refunds_is_migrated(pg_dsn):
    import psycopg

    from accountant import PostgresLedger

    rows = [r.replace("'2025-01-01T00:00:00'", "now()").replace("'2025-01-01T00:00:01'", "now()")
            .replace("X'6f6c64'", "'\\x6f6c64'::bytea") for r in OLD_ROWS]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for statement in OLD_POSTGRES_SCHEMA + rows:
            conn.execute(statement)
    acct = Accountant(PostgresLedger(pg_dsn))
    acct.register_dataset("hospital", "pure", Budget(1.0))
    _check_migrated(acct)
    PostgresLedger(pg_dsn)                                             # idempotent
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for statement in ("UPDATE refunds SET reason = 'x'", "DELETE FROM refunds"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                conn.execute(statement)


# ---------------------------------------------------------------- reserve: begun, committed later


def test_reserve_begins_under_the_lock_and_commits_from_another_thread(tmp_path):
    path = tmp_path / "l.db"
    acct = Accountant(SqliteLedger(path, busy_timeout_s=0.5))
    acct.register_dataset("hospital", "pure", Budget(1.0))
    other = Accountant(SqliteLedger(path, busy_timeout_s=0.2))
    other.register_dataset("hospital", "pure", Budget(1.0))
    pending = acct.reserve("bob", "hospital", PrivacyCost("pure", 0.6), query_key="k")
    assert pending.begun
    assert other.status("bob", "hospital").queries == 0       # not committed yet
    with pytest.raises(Conflict, match="busy"):                # and the lock is held
        other.charge("bob", "hospital", PrivacyCost("pure", 0.1))
    result = []
    worker = threading.Thread(target=lambda: result.append(pending.finish()))
    worker.start()
    worker.join(30)
    assert other.status("bob", "hospital").queries == 1       # durable: seen elsewhere
    # A second reservation is re-checked under the lock: 0.6 + 0.6 > 1, refused at once.
    with pytest.raises(BudgetExhausted):
        acct.reserve("bob", "hospital", PrivacyCost("pure", 0.6), query_key="k2")
    acct.record_answer(result[0], b"answer")
    assert other.cached_answer("bob", "hospital", "k") == b"answer"


def test_the_reserving_thread_finishes_a_lent_commit_before_reusing_its_connection(tmp_path):
    acct = Accountant(SqliteLedger(tmp_path / "l.db"))
    acct.register_dataset("hospital", "pure", Budget(1.0))
    pending = acct.reserve("bob", "hospital", PrivacyCost("pure", 0.1), query_key="k")
    assert acct.status("bob", "hospital").queries == 1         # this thread committed it
    assert pending.finish() == acct.history("bob", "hospital")[0]["id"]   # once, same id
    assert acct.status("bob", "hospital").queries == 1


def test_a_busy_lock_leaves_the_whole_charge_to_finish(tmp_path):
    path = tmp_path / "l.db"
    acct = Accountant(SqliteLedger(path))
    acct.register_dataset("hospital", "pure", Budget(1.0))
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    pending = acct.reserve("bob", "hospital", PrivacyCost("pure", 0.1), query_key="k")
    assert not pending.begun                 # did not wait for the lock
    blocker.execute("COMMIT")
    blocker.close()
    charge_id = pending.finish()
    assert [h["id"] for h in acct.history("bob", "hospital")] == [charge_id]


def test_a_begun_charge_whose_commit_fails_is_rolled_back(tmp_path):
    path = tmp_path / "l.db"
    ledger = SqliteLedger(path, busy_timeout_s=0.5)
    acct = Accountant(ledger)
    acct.register_dataset("hospital", "pure", Budget(1.0))
    acct.charge("bob", "hospital", PrivacyCost("pure", 0.1))   # opens this thread's connection
    real = ledger._local.conn

    class CommitFails:
        def __getattr__(self, name):
            return getattr(real, name)

        def execute(self, sql, *args):
            if sql == "COMMIT":
                raise sqlite3.OperationalError("disk I/O error")
            return real.execute(sql, *args)

    ledger._local.conn = CommitFails()
    pending = acct.reserve("bob", "hospital", PrivacyCost("pure", 0.1), query_key="lost")
    errors = []

    def finish():
        try:
            pending.finish()
        except Conflict as exc:
            errors.append(exc)

    worker = threading.Thread(target=finish)
    worker.start()
    worker.join(30)
    assert errors and not real.in_transaction                  # rolled back, lock released
    other = Accountant(SqliteLedger(path, busy_timeout_s=0.5))
    other.register_dataset("hospital", "pure", Budget(1.0))
    other.charge("bob", "hospital", PrivacyCost("pure", 0.1))
    ledger._local.conn = real
    assert [h["query_key"] for h in acct.history("bob", "hospital")] == [None, None]
    assert acct.status("bob", "hospital").queries == 2

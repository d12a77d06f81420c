"""SQLite ledger: one file, safe across threads and processes, durable across crashes.

* WAL journal: readers never block the writer and a committed transaction is in the WAL
  before COMMIT returns; `synchronous=FULL` fsyncs the WAL at every commit, so a charge that
  was reported committed survives SIGKILL and power loss.
* Every charge runs in `BEGIN IMMEDIATE`, which takes SQLite's single write lock before the
  first read: the re-check and the insert see and produce a serial history, so concurrent
  charges can never overspend. `busy_timeout` makes contenders wait instead of failing.
* One connection per thread and process, kept open: no connection is shared between
  threads, and nothing is inherited across fork (a forked child opens its own). Closing a
  connection per call would checkpoint the WAL each time, adding fsyncs to every query.
* Charges and refunds commit with `synchronous=FULL`. A cached answer commits with
  `synchronous=NORMAL` for its one statement (its own transaction; the pragma cannot change
  inside a transaction, so it is set before and put back after): in WAL mode that commit does
  not sync, but every later FULL commit and every checkpoint syncs the whole log first, so
  what survives an OS crash is always a prefix of the commit order. A crash can thus lose a
  cached answer (an identical repeat is charged again: conservative) but never a charge that
  was reported committed, and it cannot corrupt the file (SQLite: WAL with NORMAL is always
  consistent; only durability of that last transaction is given up). An application crash
  loses nothing in either mode.
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from accountant.budget import Spent
from accountant.ledger import (HISTORY_FIELDS, HISTORY_SQL, ChargeRequest, Decide, Ledger,
                               check_reason, history_filter)
from sqlgate.errors import Conflict, NotFound
from sqlgate.metadata import Budget

_SCHEMA = """
CREATE TABLE IF NOT EXISTS budgets (
    analyst TEXT NOT NULL,
    dataset TEXT NOT NULL,
    epsilon REAL NOT NULL,
    delta REAL NOT NULL,
    set_by TEXT NOT NULL,
    set_at TEXT NOT NULL,
    PRIMARY KEY (analyst, dataset)
);
CREATE TABLE IF NOT EXISTS charges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    analyst TEXT NOT NULL,
    dataset TEXT NOT NULL,
    measure TEXT NOT NULL CHECK (measure IN ('pure', 'zcdp')),
    epsilon REAL NOT NULL,
    delta REAL NOT NULL,
    rho REAL NOT NULL,
    query_key TEXT,
    query_text TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS charges_by_analyst_dataset ON charges (analyst, dataset);
CREATE TABLE IF NOT EXISTS answers (
    charge_id INTEGER PRIMARY KEY REFERENCES charges (id),
    analyst TEXT NOT NULL,
    dataset TEXT NOT NULL,
    query_key TEXT,
    answer BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_by_key ON answers (analyst, dataset, query_key);
-- Added after the first release: IF NOT EXISTS migrates older ledger files when opened.
CREATE TABLE IF NOT EXISTS refunds (
    charge_id INTEGER PRIMARY KEY REFERENCES charges (id),
    reason TEXT NOT NULL,
    refunded_at TEXT NOT NULL
);
-- Charge before release (privacy rule 4): the charge log is append-only. A refund is a row
-- of its own (made only before anything was released), append-only too.
CREATE TRIGGER IF NOT EXISTS charges_no_update BEFORE UPDATE ON charges
BEGIN SELECT RAISE(ABORT, 'privacy charges are append-only'); END;
CREATE TRIGGER IF NOT EXISTS charges_no_delete BEFORE DELETE ON charges
BEGIN SELECT RAISE(ABORT, 'privacy charges are append-only'); END;
CREATE TRIGGER IF NOT EXISTS refunds_no_update BEFORE UPDATE ON refunds
BEGIN SELECT RAISE(ABORT, 'privacy refunds are append-only'); END;
CREATE TRIGGER IF NOT EXISTS refunds_no_delete BEFORE DELETE ON refunds
BEGIN SELECT RAISE(ABORT, 'privacy refunds are append-only'); END;
"""


# The override, every charge not refunded and (lookup) the latest cached answer of one
# (analyst, dataset) as tagged rows of one UNION ALL. Charge rows carry their measure
# ('pure' | 'zcdp', by the table's CHECK), so the tags below cannot collide with them. The
# refund probe is a primary-key lookup per charge (the refunds table is small).
_BUDGET_TAG = "budget"
_ANSWER_TAG = "answer"
_STATE_SQL = (
    f"SELECT '{_BUDGET_TAG}', NULL, epsilon, delta, NULL FROM budgets "
    "WHERE analyst = ? AND dataset = ? "
    "UNION ALL SELECT measure, NULL, epsilon, delta, rho FROM charges "
    "WHERE analyst = ? AND dataset = ? "
    "AND NOT EXISTS (SELECT 1 FROM refunds WHERE refunds.charge_id = charges.id)")
_ANSWER_SQL = (
    f" UNION ALL SELECT '{_ANSWER_TAG}', answer, NULL, NULL, NULL FROM "
    "(SELECT answer FROM answers WHERE analyst = ? AND dataset = ? AND query_key = ? "
    "ORDER BY charge_id DESC LIMIT 1)")


# About SQLite's autocheckpoint size (1000 pages of 4 KiB): normal use never grows it again.
WAL_PREALLOCATE_BYTES = 4 << 20


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class SqliteLedger(Ledger):
    def __init__(self, path: str | Path, *, busy_timeout_s: float = 60.0):
        text = str(path)
        # Paths are opened as plain file names (no URI parsing), so only these mean memory.
        if text in ("", ":memory:"):
            raise ValueError("SqliteLedger needs a file path: an in-memory ledger would lose "
                             "charges and is private to one connection")
        self.path = Path(path)
        self.busy_timeout_s = float(busy_timeout_s)
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connection() as conn:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"could not put the ledger {self.path} in WAL mode (got {mode})")
            with self._write(conn):
                for statement in _statements(_SCHEMA):
                    conn.execute(statement)
            self._preallocate_wal(conn)

    def _preallocate_wal(self, conn: sqlite3.Connection) -> None:
        """Grow the WAL file once, so that commits overwrite it in place.

        A commit that appends to the WAL changes the file's size, and its fdatasync must then
        also commit that metadata to the file system's journal: on ext4 this doubled the cost
        of every charge (~200 us against ~90 us) until the first checkpoint, after which
        SQLite rewrites the log from its start and never shrinks it. The file is grown by a
        transaction that is rolled back: with a tiny page cache its pages spill into the WAL,
        and the rollback leaves the database and every committed frame as they were. Only
        SQLite writes its own files. An optimisation only: any failure is ignored.
        """
        wal = Path(f"{self.path}-wal")
        try:
            if wal.stat().st_size >= WAL_PREALLOCATE_BYTES:
                return
        except OSError:
            pass
        cache_size = conn.execute("PRAGMA cache_size").fetchone()[0]
        try:
            conn.execute("PRAGMA cache_size = 16")
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("CREATE TABLE __sqlgate_wal_padding (filler BLOB)")
                conn.execute("INSERT INTO __sqlgate_wal_padding VALUES (zeroblob(?))",
                             (WAL_PREALLOCATE_BYTES,))
            finally:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        finally:
            conn.execute(f"PRAGMA cache_size = {int(cache_size)}")

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        # One connection per thread and process, kept open: closing the last connection to a
        # WAL database checkpoints it (extra fsyncs) on every call, which dominated the fixed
        # cost of a query. Nothing is shared between threads, and a forked child (another
        # pid) opens its own. isolation_level=None: we issue BEGIN/COMMIT ourselves (Python's
        # implicit transactions would begin DEFERRED, which can deadlock-upgrade).
        local = self._local
        pending = getattr(local, "pending", None)
        if pending is not None:
            # This thread's connection was lent to a worker to commit a charge begun here
            # (try_begin_charge): finish that commit (or wait for it) before reusing it. Its
            # outcome belongs to whoever reserved; a failed commit was rolled back.
            local.pending = None
            if local.pid == os.getpid():
                pending.settle()
        if getattr(local, "conn", None) is None or local.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            local.conn, local.pid = conn, os.getpid()
        if local.conn.in_transaction:
            # A kept connection must never carry a transaction from an earlier call (e.g. a
            # COMMIT that failed): its uncommitted charges would look committed to this
            # thread, and it would hold the write lock against every other writer.
            local.conn.execute("ROLLBACK")
        yield local.conn

    @contextlib.contextmanager
    def _write(self, conn: sqlite3.Connection) -> Iterator[None]:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise Conflict("the privacy ledger is busy; try again",
                           hint=f"SQLite: {exc}") from None
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            # Also when COMMIT itself failed (I/O error, full disk): the connection is kept
            # for this thread, so the transaction must not stay open. SQLite may already have
            # rolled it back, hence the check.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _relaxed(self, conn: sqlite3.Connection) -> Iterator[None]:
        """Statements committed without a sync of their own (see the module docstring for
        why that is safe for cached answers, and only for them)."""
        conn.execute("PRAGMA synchronous = NORMAL")  # SQLite refuses it inside a transaction
        try:
            yield
        finally:
            try:
                conn.execute("PRAGMA synchronous = FULL")
            except BaseException:
                # Never keep a connection whose charges would commit unsynced.
                self._discard(conn)
                raise

    def _discard(self, conn: sqlite3.Connection) -> None:
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        try:
            conn.close()
        except sqlite3.Error:
            pass

    @staticmethod
    def _state(conn: sqlite3.Connection, analyst: str, dataset: str,
               query_key: str | None = None) -> tuple[bytes | None, Budget | None, Spent]:
        """(cached answer, override, spent) in ONE statement: a single SELECT reads one WAL
        snapshot by itself, so it needs no BEGIN/COMMIT around it, and one statement
        instead of three (plus two) was a visible part of every query's fixed cost."""
        params: tuple = (analyst, dataset, analyst, dataset)
        sql = _STATE_SQL
        if query_key is not None:
            sql += _ANSWER_SQL
            params += (analyst, dataset, query_key)
        answer = override = None
        charges = []
        for tag, blob, epsilon, delta, rho in conn.execute(sql, params):
            if tag == _BUDGET_TAG:
                override = Budget(epsilon=epsilon, delta=delta)
            elif tag == _ANSWER_TAG:
                answer = bytes(blob)
            else:
                charges.append((tag, epsilon, delta, rho))
        return answer, override, Spent.from_rows(charges)

    # ------------------------------------------------------------------ Ledger

    def get_override(self, analyst: str, dataset: str) -> Budget | None:
        with self._connection() as conn:
            row = conn.execute("SELECT epsilon, delta FROM budgets WHERE analyst = ? AND "
                               "dataset = ?", (analyst, dataset)).fetchone()
            return None if row is None else Budget(epsilon=row[0], delta=row[1])

    def set_override(self, analyst: str, dataset: str, budget: Budget, set_by: str) -> None:
        with self._connection() as conn, self._write(conn):
            conn.execute(
                "INSERT INTO budgets (analyst, dataset, epsilon, delta, set_by, set_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (analyst, dataset) DO UPDATE SET "
                "epsilon = excluded.epsilon, delta = excluded.delta, set_by = excluded.set_by, "
                "set_at = excluded.set_at",
                (analyst, dataset, float(budget.epsilon), float(budget.delta), set_by, _now()))

    def snapshot(self, analyst: str, dataset: str) -> tuple[Budget | None, Spent]:
        with self._connection() as conn:
            _, override, spent = self._state(conn, analyst, dataset)
            return override, spent

    def charge(self, request: ChargeRequest, decide: Decide, answer: bytes | None = None) -> int:
        with self._connection() as conn:
            with self._write(conn):
                # Read under the write lock (BEGIN IMMEDIATE): the re-check sees every
                # committed charge, and none can commit before ours.
                now = _now()
                charge_id = self._checked_insert(conn, request, decide, now)
                if answer is not None:
                    # Same transaction as the charge: one commit (one WAL fsync) per query.
                    self._insert_answer(conn, charge_id, request.analyst, request.dataset,
                                        request.query_key, answer, now)
            return int(charge_id)

    def try_begin_charge(self, request: ChargeRequest, decide: Decide) -> "_PendingCommit | None":
        with self._connection() as conn:
            if not self._begin_without_waiting(conn):
                return None  # another writer holds the lock: the whole charge goes later
            try:
                charge_id = self._checked_insert(conn, request, decide, _now())
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            pending = _PendingCommit(conn, charge_id)
            self._local.pending = pending
            return pending

    def _checked_insert(self, conn: sqlite3.Connection, request: ChargeRequest,
                        decide: Decide, now: str) -> int:
        """Inside a write transaction: re-check the budget (`decide` raises to refuse) and
        insert the charge; its id."""
        _, override, spent = self._state(conn, request.analyst, request.dataset)
        decide(override, spent)
        cursor = conn.execute(
            "INSERT INTO charges (analyst, dataset, measure, epsilon, delta, rho, "
            "query_key, query_text, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (request.analyst, request.dataset, request.measure, float(request.epsilon),
             float(request.delta), float(request.rho), request.query_key,
             request.query_text, now))
        return int(cursor.lastrowid)

    def _begin_without_waiting(self, conn: sqlite3.Connection) -> bool:
        """BEGIN IMMEDIATE if the write lock is free now; False (nothing begun) if not."""
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            conn.execute("BEGIN IMMEDIATE")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")

    def refund(self, charge_id: int, reason: str) -> None:
        reason = check_reason(reason)
        charge_id = int(charge_id)
        with self._connection() as conn, self._write(conn):  # durable: synchronous=FULL
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM answers WHERE charge_id = ?), "
                "EXISTS (SELECT 1 FROM refunds WHERE charge_id = ?) FROM charges WHERE id = ?",
                (charge_id, charge_id, charge_id)).fetchone()
            if row is None:
                raise NotFound(f"no privacy charge with id {charge_id}")
            if row[0]:
                raise Conflict(f"charge {charge_id} has a released answer; it cannot be refunded")
            if row[1]:
                raise Conflict(f"charge {charge_id} is already refunded")
            conn.execute("INSERT INTO refunds (charge_id, reason, refunded_at) VALUES (?, ?, ?)",
                         (charge_id, reason, _now()))

    def record_answer(self, charge_id: int, answer: bytes) -> None:
        charge_id = int(charge_id)
        with self._connection() as conn, self._relaxed(conn):
            # One statement, its own transaction (it takes the write lock before it reads,
            # waiting busy_timeout like BEGIN IMMEDIATE): it copies the charge's analyst,
            # dataset and key; a refunded charge matches no row; the answers primary key
            # refuses a second answer. No BEGIN/COMMIT: two statements fewer per query.
            try:
                cursor = conn.execute(
                    "INSERT INTO answers (charge_id, analyst, dataset, query_key, answer, "
                    "created_at) SELECT id, analyst, dataset, query_key, ?, ? FROM charges "
                    "WHERE id = ? AND NOT EXISTS "
                    "(SELECT 1 FROM refunds WHERE refunds.charge_id = charges.id)",
                    (bytes(answer), _now(), charge_id))
            except sqlite3.IntegrityError:
                raise Conflict(f"an answer is already recorded for charge {charge_id}") from None
            except sqlite3.OperationalError as exc:
                raise Conflict("the privacy ledger is busy; try again",
                               hint=f"SQLite: {exc}") from None
            if cursor.rowcount != 1:
                if conn.execute("SELECT 1 FROM charges WHERE id = ?", (charge_id,)).fetchone():
                    raise Conflict(f"charge {charge_id} was refunded; it has no answer")
                raise NotFound(f"no privacy charge with id {charge_id}")

    @staticmethod
    def _insert_answer(conn: sqlite3.Connection, charge_id: int, analyst: str, dataset: str,
                       query_key: str | None, answer: bytes, now: str) -> None:
        conn.execute("INSERT INTO answers (charge_id, analyst, dataset, query_key, answer, "
                     "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                     (int(charge_id), analyst, dataset, query_key, bytes(answer), now))

    @staticmethod
    def _cached(conn: sqlite3.Connection, analyst: str, dataset: str,
                query_key: str) -> bytes | None:
        row = conn.execute("SELECT answer FROM answers WHERE analyst = ? AND dataset = ? "
                           "AND query_key = ? ORDER BY charge_id DESC LIMIT 1",
                           (analyst, dataset, query_key)).fetchone()
        return None if row is None else bytes(row[0])

    def cached_answer(self, analyst: str, dataset: str, query_key: str) -> bytes | None:
        with self._connection() as conn:
            return self._cached(conn, analyst, dataset, query_key)

    def lookup(self, analyst: str, dataset: str, query_key: str
               ) -> tuple[bytes | None, Budget | None, Spent | None]:
        # One statement (one WAL snapshot) for the answer cache and the budget pre-check.
        with self._connection() as conn:
            cached, override, spent = self._state(conn, analyst, dataset, query_key)
            if cached is not None:
                return cached, None, None
            return None, override, spent

    def history(self, analyst: str | None = None, dataset: str | None = None) -> list[dict]:
        where, params = history_filter(analyst, dataset, "?")
        with self._connection() as conn:
            rows = conn.execute(f"{HISTORY_SQL}{where} ORDER BY c.id", params).fetchall()
        return [dict(zip(HISTORY_FIELDS, row)) for row in rows]

    def __repr__(self) -> str:
        return f"SqliteLedger({str(self.path)!r})"


class _PendingCommit:
    """The COMMIT of a charge begun by try_begin_charge, run once by whoever comes first:
    the worker it was handed to, or the thread that began it when it next needs its
    connection. Python's sqlite3 releases the GIL while SQLite commits (and fsyncs)."""

    def __init__(self, conn: sqlite3.Connection, charge_id: int):
        self._conn = conn
        self._charge_id = charge_id
        self._lock = threading.Lock()
        self._done = False
        self._error: BaseException | None = None

    def settle(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            try:
                self._conn.execute("COMMIT")
            except BaseException as exc:
                self._error = exc
                try:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass

    def __call__(self) -> int:
        self.settle()
        if self._error is not None:
            if isinstance(self._error, sqlite3.OperationalError):
                raise Conflict("the privacy ledger could not commit the charge; try again",
                               hint=f"SQLite: {self._error}") from None
            raise self._error
        return self._charge_id


def _statements(script: str) -> list[str]:
    """Split the schema script; triggers contain ';' inside BEGIN ... END."""
    out, buf = [], []
    for line in script.strip().splitlines():
        if line.startswith("--"):
            continue
        buf.append(line)
        text = "\n".join(buf)
        if sqlite3.complete_statement(text):
            out.append(text.strip())
            buf = []
    return out

"""Run bounded SQL on the domain's engine (embedded DuckDB by default), sandboxed.

The DuckDB database is opened with external access off and its configuration locked
(privacy rule 7), so not even a bug in the rewriter could read files, load extensions or
change settings. Data is loaded by the owner through Arrow objects handed over in memory,
which needs no file access. Engine errors are never shown: their texts can quote values.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import duckdb

from sqlgate.errors import ExecutionFailed, QueryCanceled

SANDBOX_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "lock_configuration": True,
}


@dataclass(frozen=True)
class RawResult:
    """Un-noised engine output. Never leaves the gateway process."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


class Executor(Protocol):
    dialect: str

    def run(self, sql: str, *, timeout_s: float | None = None) -> RawResult: ...

    def close(self) -> None: ...


def sandboxed_duckdb(path: str | None = None, *, threads: int | None = None,
                     memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    config = dict(SANDBOX_CONFIG)
    if threads:
        config["threads"] = threads
    if memory_limit:
        config["memory_limit"] = memory_limit
    return duckdb.connect(path or ":memory:", config=config)


class DuckDBExecutor:
    dialect = "duckdb"
    PREPARED_PER_THREAD = 128
    """Prepared statements kept per thread (least recently used ones are deallocated)."""

    def __init__(self, path: str | None = None, *, threads: int | None = None):
        self._db = sandboxed_duckdb(path, threads=threads)
        self._lock = threading.Lock()
        self._watchdog = Watchdog()
        # One kept cursor per thread, with the statements it prepared: parsing, binding and
        # planning a bounded query again on every run cost 0.1-0.25 ms, 5-10% of a small
        # TPC-H query. DuckDB rebinds a prepared statement when its tables change.
        self._local = threading.local()
        self._kept: list[tuple[threading.Thread, duckdb.DuckDBPyConnection]] = []

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The owner-side connection (loading data); never given analyst SQL."""
        return self._db

    def cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            return self._db.cursor()

    def run(self, sql: str, *, timeout_s: float | None = None,
            cancel: threading.Event | None = None, as_frame: bool = False,
            as_arrow: bool = False):
        """Run SQL; rows as tuples, or a pandas DataFrame (as_frame) or an Arrow table
        (as_arrow: the cheapest way to fetch bulk values, ~3x faster than a DataFrame)."""
        rows_only = not (as_arrow or as_frame)
        cursor = self._kept_cursor() if rows_only else self.cursor()
        cancel = cancel or threading.Event()
        watch = self._watchdog.watch(cursor, cancel, timeout_s)
        try:
            if cancel.is_set():
                raise QueryCanceled("the query was cancelled")
            if as_arrow:
                # A relation, not execute(): Arrow from a DB-API result copies the rows again.
                return cursor.sql(sql).to_arrow_table()
            relation = self._execute_prepared(cursor, sql) if rows_only else cursor.execute(sql)
            columns = tuple(d[0] for d in relation.description)
            if as_frame:
                return relation.df()
            rows = relation.fetchall()
            return RawResult(columns, rows)
        except duckdb.Error:
            if watch.timed_out.is_set():
                raise QueryCanceled("the query exceeded the statement timeout") from None
            if cancel.is_set():
                raise QueryCanceled("the query was cancelled") from None
            raise ExecutionFailed() from None
        finally:
            # After this returns the watchdog can no longer interrupt the cursor (an
            # interrupt that lands on an idle kept cursor does not reach its next query).
            self._watchdog.release(watch)
            if not rows_only:
                cursor.close()

    def _kept_cursor(self) -> duckdb.DuckDBPyConnection:
        local = self._local
        if getattr(local, "cursor", None) is None:
            local.cursor = self.cursor()
            local.prepared = OrderedDict()
            local.counter = 0
            with self._lock:
                # Threads that ended no longer use theirs: close them (a server's thread
                # pools may come and go; nothing else would free those cursors).
                ended = [c for thread, c in self._kept if not thread.is_alive()]
                self._kept = [(t, c) for t, c in self._kept if t.is_alive()]
                self._kept.append((threading.current_thread(), local.cursor))
            for cursor in ended:
                _close_quietly(cursor)
        return local.cursor

    def _execute_prepared(self, cursor: duckdb.DuckDBPyConnection, sql: str):
        """EXECUTE of `sql` prepared once on this thread's cursor. A statement DuckDB will
        not prepare runs as it is, so its errors are exactly those of a plain run."""
        local = self._local
        name = local.prepared.get(sql)
        if name is None:
            local.counter += 1
            name = f"sqlgate_p{local.counter}"
            try:
                cursor.execute(f"PREPARE {name} AS {sql}")
            except duckdb.Error:
                return cursor.execute(sql)
            local.prepared[sql] = name
            if len(local.prepared) > self.PREPARED_PER_THREAD:
                _, oldest = local.prepared.popitem(last=False)
                try:
                    cursor.execute(f"DEALLOCATE {oldest}")
                except duckdb.Error:  # only memory is at stake
                    pass
        else:
            local.prepared.move_to_end(sql)
        return cursor.execute(f"EXECUTE {name}")

    def close(self) -> None:
        self._watchdog.close()
        with self._lock:
            kept, self._kept = self._kept, []
        for _, cursor in kept:
            _close_quietly(cursor)
        self._db.close()


def _close_quietly(cursor: duckdb.DuckDBPyConnection) -> None:
    try:
        cursor.close()
    except duckdb.Error:  # already closed
        pass


@dataclass
class _Watch:
    cursor: Any
    cancel: threading.Event
    deadline: float | None
    timed_out: threading.Event


class Watchdog:
    """Interrupts running statements that are cancelled or past their deadline.

    One daemon thread per executor, started on first use, serves every statement: starting
    a watcher thread per statement cost about a millisecond, a visible share of a small DP
    query. It polls every POLL_S seconds like the per-statement watcher did, so a cancel
    or timeout is noticed as quickly as before.
    """

    POLL_S = 0.05

    def __init__(self):
        self._cond = threading.Condition()
        self._active: dict[int, _Watch] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._idle = False  # the loop waits without a timeout (nothing to watch)

    def watch(self, cursor, cancel: threading.Event, timeout_s: float | None) -> _Watch:
        deadline = time.monotonic() + timeout_s if timeout_s else None
        watch = _Watch(cursor, cancel, deadline, threading.Event())
        with self._cond:
            self._active[id(watch)] = watch
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._loop, name="sqlgate-watchdog",
                                                daemon=True)
                self._thread.start()
            if self._idle:
                # Only an idle loop needs waking: a polling one sees the new statement at
                # its next poll, and waking it on every statement cost a thread switch.
                self._cond.notify()
        return watch

    def release(self, watch: _Watch) -> None:
        with self._cond:
            self._active.pop(id(watch), None)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _loop(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._active:
                    self._idle = True
                    self._cond.wait()
                    self._idle = False
                    continue
                now = time.monotonic()
                for key, watch in list(self._active.items()):
                    cancelled = watch.cancel.is_set()
                    expired = watch.deadline is not None and now >= watch.deadline
                    if not (cancelled or expired):
                        continue
                    if not cancelled:
                        watch.timed_out.set()
                    del self._active[key]
                    # Under the lock: release() has not run, so the cursor is still open.
                    try:
                        watch.cursor.interrupt()
                    except Exception:  # noqa: BLE001 - the statement may just have finished
                        pass
                self._cond.wait(self.POLL_S)

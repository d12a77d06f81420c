"""Run bounded SQL on PostgreSQL (psycopg 3).

`run()` takes the rewriter's DuckDB-dialect SQL and translates it (sqlgate/backends/dialects.py).
Each run is one transaction that is always rolled back: per-query helper functions live in
pg_temp and vanish with it, and nothing the query does can persist. statement_timeout is set
per transaction and a watcher thread cancels on timeout or on the caller's cancel event.
Engine errors are never shown (their texts can quote values): they become ExecutionFailed.

The executor's role should only have USAGE on the dataset schemas and SELECT on their tables
(and TEMPORARY on the database, for the pg_temp helpers); loading data is a separate, owner
side call (`load_dataset`) that needs CREATE.
"""
from __future__ import annotations

import decimal
import threading
from typing import Any, Mapping

import pandas as pd

from sqlgate.backends.dialects import translate
from sqlgate.backends.loading import PG_TYPES, dataset_rows
from sqlgate.errors import DataLoadError, ExecutionFailed, QueryCanceled
from sqlgate.executor import RawResult
from sqlgate.metadata import DatasetMeta

_MAX_IDLE = 4


class PostgresExecutor:
    dialect = "postgres"
    input_dialect = "duckdb"
    """run() expects the rewriter's DuckDB-dialect SQL; translation is this class's job."""

    def __init__(self, conninfo: str, *, connect_timeout_s: float = 10.0):
        import psycopg  # optional dependency: pip install "psycopg[binary]"
        self._psycopg = psycopg
        self._conninfo = conninfo
        self._connect_timeout = int(max(1, connect_timeout_s))
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------ analyst path

    def translate(self, sql: str):
        return translate(sql, "postgres")

    def run(self, sql: str, *, timeout_s: float | None = None,
            cancel: threading.Event | None = None, as_frame: bool = False):
        """Rows as tuples (RawResult), or (as_frame) a pandas DataFrame, like DuckDBExecutor."""
        engine_sql = self.translate(sql)
        conn = self._acquire()
        finished = threading.Event()
        timed_out = threading.Event()
        cancel = cancel or threading.Event()

        def watch():
            deadline_hit = not _wait_any(cancel, finished, timeout_s)
            if finished.is_set():
                return
            if deadline_hit:
                timed_out.set()
            try:
                conn.cancel_safe()
            except Exception:
                pass

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        healthy = True
        try:
            if cancel.is_set():
                raise QueryCanceled("the query was cancelled")
            with conn.transaction(force_rollback=True):
                with conn.cursor() as cur:
                    if timeout_s:
                        cur.execute(f"SET LOCAL statement_timeout = {int(timeout_s * 1000) + 1}")
                    for statement in engine_sql.setup:
                        cur.execute(statement)
                    cur.execute(engine_sql.query)
                    columns = tuple(d.name for d in cur.description)
                    rows = [tuple(_plain(v) for v in row) for row in cur.fetchall()]
            if as_frame:
                return pd.DataFrame.from_records(rows, columns=list(columns))
            return RawResult(columns, rows)
        except self._psycopg.Error as err:
            healthy = not conn.closed and conn.info.transaction_status == \
                self._psycopg.pq.TransactionStatus.IDLE
            if timed_out.is_set() or getattr(err, "sqlstate", None) == "57014" and not cancel.is_set():
                raise QueryCanceled("the query exceeded the statement timeout") from None
            if cancel.is_set():
                raise QueryCanceled("the query was cancelled") from None
            raise ExecutionFailed() from None
        finally:
            finished.set()
            watcher.join(timeout=0.05)
            self._release(conn, healthy)

    # ------------------------------------------------------------ owner path

    def load_dataset(self, meta: DatasetMeta, sources: Mapping[str, pd.DataFrame], *,
                     replace: bool = True) -> None:
        """Create schema `meta.name` and its tables from frames, all or nothing."""
        rows_by_table = dataset_rows(meta, dict(sources))
        schema = _ident(meta.name)
        conn = self._connect()
        try:
            with conn.transaction():
                with conn.cursor() as cur:
                    cur.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                    for name, rows in rows_by_table.items():
                        table = meta.tables[name]
                        target = f"{schema}.{_ident(table.name)}"
                        if replace:
                            cur.execute(f"DROP TABLE IF EXISTS {target}")
                        columns = ", ".join(f"{_ident(c.name)} {PG_TYPES[c.type]}"
                                            for c in table.columns.values())
                        cur.execute(f"CREATE TABLE {target} ({columns})")
                        names = ", ".join(_ident(c) for c in table.columns)
                        with cur.copy(f"COPY {target} ({names}) FROM STDIN") as copy:
                            for row in rows:
                                copy.write_row(row)
                        cur.execute(f"ANALYZE {target}")
        except self._psycopg.Error as err:
            raise DataLoadError(f"dataset '{meta.name}' could not be loaded into PostgreSQL "
                                f"(SQLSTATE {getattr(err, 'sqlstate', None) or 'unknown'})") from None
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # ------------------------------------------------------------ connections

    def _connect(self):
        try:
            return self._psycopg.connect(self._conninfo, autocommit=True,
                                         connect_timeout=self._connect_timeout)
        except self._psycopg.Error:
            raise ExecutionFailed("the PostgreSQL backend is unreachable") from None

    def _acquire(self):
        with self._lock:
            if self._closed:
                raise ExecutionFailed("the PostgreSQL executor is closed")
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _release(self, conn, healthy: bool) -> None:
        with self._lock:
            if healthy and not conn.closed and not self._closed and len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _plain(value: Any) -> Any:
    """NUMERIC sums come back as Decimal; integers stay exact, the rest become floats."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _wait_any(cancel: threading.Event, finished: threading.Event, timeout_s: float | None) -> bool:
    import time
    deadline = None if not timeout_s else time.monotonic() + timeout_s
    while True:
        if cancel.is_set() or finished.is_set():
            return True
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        finished.wait(0.05 if remaining is None else min(0.05, remaining))

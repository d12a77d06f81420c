"""Run bounded SQL on the domain's engine (embedded DuckDB by default), sandboxed.

The DuckDB database is opened with external access off and its configuration locked
(privacy rule 7), so not even a bug in the rewriter could read files, load extensions or
change settings. Data is loaded by the owner through Arrow objects handed over in memory,
which needs no file access. Engine errors are never shown: their texts can quote values.
"""
from __future__ import annotations

import threading
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


def sandboxed_duckdb(path: str | None = None, *, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    config = dict(SANDBOX_CONFIG)
    if threads:
        config["threads"] = threads
    return duckdb.connect(path or ":memory:", config=config)


class DuckDBExecutor:
    dialect = "duckdb"

    def __init__(self, path: str | None = None, *, threads: int | None = None):
        self._db = sandboxed_duckdb(path, threads=threads)
        self._lock = threading.Lock()

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The owner-side connection (loading data); never given analyst SQL."""
        return self._db

    def cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            return self._db.cursor()

    def run(self, sql: str, *, timeout_s: float | None = None,
            cancel: threading.Event | None = None, as_frame: bool = False):
        """Run SQL; rows as tuples, or (as_frame) a pandas DataFrame for bulk values."""
        cursor = self.cursor()
        finished = threading.Event()
        timed_out = threading.Event()
        cancel = cancel or threading.Event()

        def watch():
            # Wakes on cancel, on timeout, or when the query finished on its own.
            deadline_hit = not _wait_any(cancel, finished, timeout_s)
            if finished.is_set():
                return
            if deadline_hit:
                timed_out.set()
            cursor.interrupt()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            if cancel.is_set():
                raise QueryCanceled("the query was cancelled")
            relation = cursor.execute(sql)
            columns = tuple(d[0] for d in relation.description)
            if as_frame:
                return relation.df()
            rows = relation.fetchall()
            return RawResult(columns, rows)
        except duckdb.Error:
            if timed_out.is_set():
                raise QueryCanceled("the query exceeded the statement timeout") from None
            if cancel.is_set():
                raise QueryCanceled("the query was cancelled") from None
            raise ExecutionFailed() from None
        finally:
            finished.set()
            watcher.join(timeout=0.05)
            cursor.close()

    def close(self) -> None:
        self._db.close()


def _wait_any(cancel: threading.Event, finished: threading.Event, timeout_s: float | None) -> bool:
    """Wait until cancel or finished is set; False if timeout_s passed first."""
    import time
    deadline = None if not timeout_s else time.monotonic() + timeout_s
    while True:
        if cancel.is_set() or finished.is_set():
            return True
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return False
        finished.wait(0.05 if remaining is None else min(0.05, remaining))

"""One way to open the server's small SQLite stores (users, requests, audit).

WAL so readers never block the writer, `synchronous=FULL` so a committed change survives a
crash, a connection per call so nothing is shared between threads or inherited across fork,
and `BEGIN IMMEDIATE` for writes so read-check-write sequences are serial across processes.
"""
from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def sqlite_connection(path: str | Path, *, write: bool = False, foreign_keys: bool = False,
                      timeout_s: float = 30.0) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        if foreign_keys:
            conn.execute("PRAGMA foreign_keys=ON")
        if not write:
            yield conn
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()

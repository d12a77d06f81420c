from __future__ import annotations

import itertools

import pytest

from accountant import SqliteLedger
from tests.pgserver import PostgresServer

_db_numbers = itertools.count()


@pytest.fixture(scope="session")
def pg_server():
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_dsn(pg_server):
    """A fresh database on the throwaway server for each test."""
    import psycopg

    name = f"ledger_{next(_db_numbers)}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return pg_server.dsn(name)


@pytest.fixture(params=["sqlite", "postgres"])
def make_ledger(request, tmp_path):
    """A factory opening (again) the same ledger store: sqlite file or postgres database."""
    if request.param == "sqlite":
        path = tmp_path / "ledger.db"
        return lambda: SqliteLedger(path)
    dsn = request.getfixturevalue("pg_dsn")
    from accountant import PostgresLedger

    return lambda: PostgresLedger(dsn)

"""Ingest truncation through `unit_via` on PostgreSQL: the external loader runs the DuckDB
catalog's truncation SQL in-process, so both engines store the very same rows, and it
refuses a repeated parent key the same way. Skips locally without PostgreSQL binaries or
psycopg; fails in CI (the server is installed by .ci/install-backends.sh)."""
from __future__ import annotations

import pandas as pd
import pytest

from sqlgate.errors import DataLoadError
from sqlgate.gateway import Gateway
from tests.pgserver import PostgresServer
from tests.core.test_unit_via_truncation import K, _data, _meta

TABLES = ("customers", "orders", "lines", "tags")


@pytest.fixture(scope="module")
def pg():
    with PostgresServer() as server:
        yield server


def _stored(run, schema, table):
    # The declared columns: DuckDB also stores hidden sum columns (sqlgate/stored_sums.py).
    columns = ", ".join(f'"{c}"' for c in _meta().tables[table].columns)
    return sorted(tuple(row) for row in run(f'SELECT {columns} FROM "{schema}"."{table}"').rows)


def test_postgres_stores_the_same_truncated_tables_as_duckdb(pg, tmp_path):
    from sqlgate.backends.postgres import PostgresExecutor

    frames = _data(heavy=77)
    meta = _meta()
    executor = PostgresExecutor(pg.conninfo)
    try:
        executor.load_dataset(meta, frames)
        with Gateway(tmp_path / "duck") as duck:
            duck.add_dataset(meta, frames)
            for table in TABLES:
                on_pg = _stored(executor.run, "shop", table)
                assert on_pg == _stored(duck.executor.run, "shop", table), table
        per_unit = dict(executor.run('SELECT o.cust, COUNT(*) FROM shop.lines l JOIN shop.orders o '
                                     'ON l.okey = o.okey GROUP BY o.cust').rows)
        assert max(per_unit.values()) == K and per_unit[77] == K
        orphans = executor.run("SELECT COUNT(*) FROM shop.lines l WHERE NOT EXISTS "
                               "(SELECT 1 FROM shop.orders o WHERE o.okey = l.okey)").rows
        assert orphans[0][0] == 0
        assert len(_stored(executor.run, "shop", "lines")) < len(frames["lines"])
    finally:
        executor.close()


def test_postgres_loader_refuses_a_repeated_parent_key_before_touching_the_engine(pg):
    from sqlgate.backends.postgres import PostgresExecutor

    frames = _data()
    executor = PostgresExecutor(pg.conninfo)
    try:
        executor.load_dataset(_meta("kept"), frames)
        before = _stored(executor.run, "kept", "lines")
        dup = dict(frames)
        dup["orders"] = pd.concat([frames["orders"], frames["orders"].head(1).assign(cust=5)])
        with pytest.raises(DataLoadError, match="'orders'.*okey"):
            executor.load_dataset(_meta("kept"), dup)
        assert _stored(executor.run, "kept", "lines") == before
    finally:
        executor.close()


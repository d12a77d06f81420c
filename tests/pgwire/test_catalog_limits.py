"""The synthetic catalog runs client SQL: it must stay bounded in rows, memory and time, and a
hostile catalog query must not cost other users anything (review findings)."""
from __future__ import annotations

import pytest
import sqlglot

from server.pgwire.catalog import SyntheticCatalog
from sqlgate.errors import LimitExceeded, PolicyRefused, QueryCanceled, TooManyRequests
from tests._require import require_module
from tests.core.conftest import people_metadata


def _catalog(**limits) -> SyntheticCatalog:
    return SyntheticCatalog([people_metadata()], user="alice",
                            settings={"session_authorization": "alice"}, **limits)


def _tree(sql: str):
    return sqlglot.parse_one(sql, read="postgres")


def test_row_flood_is_refused_not_materialised():
    catalog = _catalog(max_rows=1000)
    try:
        with pytest.raises(LimitExceeded):
            catalog.run(_tree("SELECT * FROM generate_series(1, 5000000)"))
        # Within the limit, set-returning helpers in FROM still work.
        assert catalog.run(_tree("SELECT count(*) FROM generate_series(1, 10)")).rows == [(10,)]
    finally:
        catalog.close()


def test_endless_catalog_query_is_interrupted():
    catalog = _catalog(timeout_s=0.2)
    try:
        with pytest.raises(QueryCanceled):
            catalog.run(_tree("SELECT count(*) FROM generate_series(1, 10000000000000) a"))
        # The connection's catalog stays usable afterwards.
        assert catalog.run(_tree("SELECT relname FROM pg_class")).rows == [("people",)]
    finally:
        catalog.close()


@pytest.mark.parametrize("sql", [
    "SELECT length(repeat('x', 1000000000))",
    "SELECT lpad(relname, 1000000000, 'x') FROM pg_class",
    "SELECT rpad('a', 1000000000)",
    "SELECT printf('%900000000d', 1)",
    "SELECT generate_series(1, 300000000)",
    "SELECT * FROM unnest(generate_series(1, 300000000))",
])
def test_amplifying_scalar_functions_are_refused(sql):
    catalog = _catalog()
    try:
        tree = _tree(sql)
        assert catalog.uses_only_catalog(tree)
        with pytest.raises(PolicyRefused):
            catalog.check_bounded(tree)
    finally:
        catalog.close()


def test_catalog_queries_over_the_wire_are_bounded(pg):
    psycopg = require_module("psycopg")
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("SELECT length(repeat('x', 1000000000))")
        assert refused.value.sqlstate == "42501"
        with pytest.raises(psycopg.Error) as flood:
            conn.execute("SELECT * FROM generate_series(1, 5000000)")
        assert flood.value.sqlstate == "54000"
        # The connection is still usable, and catalog answers still work.
        assert conn.execute("SELECT relname FROM pg_class").fetchall() == [("people",)]


def test_catalog_queries_count_against_the_per_user_limit(pg):
    """A user at the concurrency limit cannot start catalog work either (Trino does the same),
    so many connections of one user cannot occupy every worker thread."""
    psycopg = require_module("psycopg")
    limiter = pg.service.limiter
    slots = [limiter.slot("alice") for _ in range(limiter.limit)]
    for slot in slots:
        slot.__enter__()
    try:
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:
            with pytest.raises(psycopg.Error) as busy:
                conn.execute("SELECT relname FROM pg_class")
            assert busy.value.sqlstate == TooManyRequests.sqlstate
    finally:
        for slot in slots:
            slot.__exit__(None, None, None)
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT relname FROM pg_class").fetchall() == [("people",)]



def test_deeply_nested_queries_get_a_clear_error(pg):
    psycopg = require_module("psycopg")
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        for sql in ("SELECT " + "(" * 3000 + "1" + ")" * 3000,
                    "SELECT COUNT(*) FROM people WHERE " + "(" * 3000 + "age > 1" + ")" * 3000):
            with pytest.raises(psycopg.Error) as nested:
                conn.execute(sql)
            assert nested.value.sqlstate == "0A000"
            assert "nested too deeply" in str(nested.value)
        assert conn.execute("SELECT 1").fetchall() == [(1,)]


def test_many_sets_are_cheap_and_bounded(pg):
    """Review finding: every SET rewrote the catalog's pg_settings row by row (about 0.1 s per
    SET, quadratic in the number of settings), so one message of 1000 SETs held a worker
    thread for minutes. Settings are now written once, before the next catalog query, and a
    session holds a bounded number of them."""
    from server.pgwire.session import MAX_SETTING_CHARS, MAX_SETTINGS
    psycopg = require_module("psycopg")
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")   # the catalog engine exists from here on
        count = MAX_SETTINGS - 100
        conn.execute(";".join(f"SET app.x{i} = 'v{i}'" for i in range(count)))
        rows = conn.execute("SELECT count(*) FROM pg_settings WHERE name LIKE 'app.x%'")
        assert rows.fetchall() == [(count,)]
        assert conn.execute("SELECT current_setting('app.x7')").fetchall() == [("v7",)]
        with pytest.raises(psycopg.Error) as too_many:
            conn.execute(";".join(f"SET app.y{i} = 1" for i in range(200)))
        assert too_many.value.sqlstate == "54000"
        with pytest.raises(psycopg.Error) as too_long:
            conn.execute(f"SET app.x1 = '{'z' * (MAX_SETTING_CHARS + 1)}'")
        assert too_long.value.sqlstate == "54000"
        # Existing names can still change, and the session works.
        conn.execute("SET app.x1 = 'changed'")
        assert conn.execute("SHOW app.x1").fetchall() == [("changed",)]


def test_settings_reach_the_catalog_lazily():
    catalog = _catalog()
    try:
        assert catalog.run(_tree("SELECT current_setting('session_authorization')")).rows == \
            [("alice",)]
        catalog.set_settings({"session_authorization": "alice", "application_name": "psql"})
        catalog.set_settings({"session_authorization": "alice", "application_name": "dbeaver"})
        assert catalog.run(_tree("SELECT current_setting('application_name')")).rows == \
            [("dbeaver",)]
    finally:
        catalog.close()


def test_large_catalogs_load_every_column_with_its_types():
    """Catalog rows are bulk-loaded (executemany took milliseconds per row, seconds for a
    domain with thousands of columns); the content must be exactly the same."""
    from sqlgate.metadata import parse_dataset
    metas = [parse_dataset({"dataset": f"d{i}", "tables": {
        f"t{j}": {"privacy_unit": "c0", "columns": {
            f"c{k}": ("int" if k % 3 == 0 else "float" if k % 3 == 1 else "string")
            for k in range(40)}} for j in range(5)}}) for i in range(10)]
    catalog = SyntheticCatalog(metas, user="alice", settings={"session_authorization": "alice"})
    try:
        rows = catalog.run(_tree(
            "SELECT t.typname, count(*), min(a.attnum), max(a.attnum) FROM pg_attribute a "
            "JOIN pg_type t ON t.oid = a.atttypid GROUP BY t.typname ORDER BY 1")).rows
        assert rows == [("float8", 650, 2, 38), ("int8", 700, 1, 40), ("text", 650, 3, 39)]
        assert catalog.run(_tree("SELECT count(*) FROM information_schema.columns "
                                 "WHERE is_nullable = 'YES'")).rows == [(2000,)]
        assert catalog.run(_tree("SELECT count(*), min(reltuples), max(reltuples) FROM pg_class"
                                 )).rows == [(50, -1.0, -1.0)]
    finally:
        catalog.close()


def test_huge_query_text_is_refused_before_parsing(pg):
    """Review finding: catalog-bound SQL went to sqlglot whatever its size (up to the 16 MiB
    message limit); parsing 1 MB took ~5 s and ~0.5 GB. The planner's length limit now
    applies before any parsing, on every path."""
    from rewriter.parse import MAX_SQL_LENGTH
    psycopg = require_module("psycopg")
    huge = "SELECT 1 WHERE 1 IN (" + ",".join("1" for _ in range(MAX_SQL_LENGTH)) + ")"
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as refused:
            conn.execute(huge)
        assert refused.value.sqlstate == "0A000"
        assert "longer than" in str(refused.value)
        with pytest.raises(psycopg.Error) as prepared:   # extended protocol (Parse) as well
            conn.execute(huge, prepare=True)
        assert prepared.value.sqlstate == "0A000"
        assert conn.execute("SELECT 1").fetchall() == [(1,)]

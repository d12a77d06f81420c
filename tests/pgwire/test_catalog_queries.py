"""Connect-time and browsing queries real tools send (DBeaver, Metabase, Superset, psql),
answered from the synthetic catalog: they must succeed and show only the caller's tables."""
from __future__ import annotations

import pytest

from tests._require import require_module

pytestmark = pytest.mark.clients

# Each query with a predicate on its answer.
QUERIES = [
    # DBeaver
    ("SELECT current_schema(), session_user", lambda rows: rows == [("town", "alice")]),
    ("SELECT n.oid, n.*, d.description FROM pg_catalog.pg_namespace n LEFT OUTER JOIN "
     "pg_catalog.pg_description d ON d.objoid = n.oid AND d.objsubid = 0 AND "
     "d.classoid = 'pg_namespace'::regclass ORDER BY nspname",
     lambda rows: "town" in [r[2] for r in rows]),
    ("SELECT t.oid, t.*, c.relkind, format_type(nullif(t.typbasetype, 0), t.typtypmod) AS "
     "base_type_name, d.description FROM pg_catalog.pg_type t LEFT OUTER JOIN "
     "pg_catalog.pg_type et ON et.oid = t.typelem LEFT OUTER JOIN pg_catalog.pg_class c ON "
     "c.oid = t.typrelid LEFT OUTER JOIN pg_catalog.pg_description d ON t.oid = d.objoid "
     "WHERE t.typname IS NOT NULL AND (c.relkind IS NULL OR c.relkind = 'c') AND "
     "(et.typcategory IS NULL OR et.typcategory <> 'C')",
     lambda rows: {"int8", "text", "float8"} <= {r[2] for r in rows}),
    ("SELECT * FROM pg_catalog.pg_settings WHERE name = 'standard_conforming_strings'",
     lambda rows: rows[0][1] == "on"),
    ("SELECT db.oid, db.* FROM pg_catalog.pg_database db WHERE datallowconn AND NOT "
     "datistemplate OR db.datname = 'sqlgate' ORDER BY db.datname",
     lambda rows: [r[2] for r in rows] == ["sqlgate"]),
    ("SELECT c.oid, c.*, d.description FROM pg_catalog.pg_class c LEFT OUTER JOIN "
     "pg_catalog.pg_description d ON d.objoid = c.oid AND d.objsubid = 0 WHERE "
     "c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'town') AND "
     "c.relkind NOT IN ('i', 'I', 'c')", lambda rows: [r[2] for r in rows] == ["people"]),
    # Metabase / pgJDBC helpers
    ("SELECT nspname AS table_schem, NULL AS table_catalog FROM pg_catalog.pg_namespace WHERE "
     "nspname <> 'pg_toast' AND (nspname !~ '^pg_temp_' OR nspname = "
     "(pg_catalog.current_schemas(true))[1]) ORDER BY table_schem",
     lambda rows: "town" in [r[0] for r in rows]),
    ("SHOW TIME ZONE", lambda rows: rows == [("UTC",)]),
    ("SELECT current_database(), version(), current_setting('server_version_num')",
     lambda rows: rows[0][0] == "sqlgate" and rows[0][2] == "160004"),
    ("SELECT has_table_privilege('town.people', 'SELECT'), pg_backend_pid() > 0",
     lambda rows: rows == [(True, True)]),
    # information_schema (Superset, generic tools)
    ("SELECT table_schema, table_name, table_type FROM information_schema.tables WHERE "
     "table_schema NOT IN ('pg_catalog', 'information_schema')",
     lambda rows: rows == [("town", "people", "BASE TABLE")]),
    ("SELECT schema_name FROM information_schema.schemata ORDER BY 1",
     lambda rows: "town" in [r[0] for r in rows]),
    ("SELECT 1", lambda rows: rows == [(1,)]),
    # No statistics or sizes, ever.
    ("SELECT relname, reltuples, pg_relation_size(oid) FROM pg_class",
     lambda rows: rows == [("people", -1.0, 0)]),
]


def test_tool_queries(pg):
    psycopg = require_module("psycopg")
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        before = pg.queries()
        for sql, check in QUERIES:
            rows = conn.execute(sql).fetchall()
            assert check(rows), (sql, rows[:3])
        assert pg.queries() == before  # catalog answers never touch the budget

"""Statement planning without a server: parameters, routing between catalog and DP paths."""
from __future__ import annotations

import pytest

from server.auth import User
from server.trino.errors import TrinoError
from server.trino.metadata import CatalogView, run_in_sandbox
from server.trino.session import TrinoSession
from server.trino.statements import (DPQuery, SandboxQuery, StaticResult, bind_parameters,
                                     plan_statement)
from sqlgate.errors import SqlSyntaxError
from sqlgate.metadata import parse_dataset_text
from tests.client.live import HOSPITAL_YAML

VIEW = CatalogView((parse_dataset_text(HOSPITAL_YAML),), "ann")
SESSION = TrinoSession(User("ann", "analyst"), catalog="sqlgate", schema="hospital")


def test_bind_parameters_renders_literals_only():
    assert bind_parameters("SELECT a FROM t WHERE b = ? AND c = '?' AND d = ?",
                           "'it''s', -2.5") == \
        "SELECT a FROM t WHERE b = 'it''s' AND c = '?' AND d = -2.5"
    assert bind_parameters("SELECT ?", "DATE '2024-01-31'") == "SELECT CAST('2024-01-31' AS DATE)"
    assert bind_parameters("SELECT 1", None) == "SELECT 1"
    with pytest.raises(TrinoError, match="expected 2 but found 1"):
        bind_parameters("SELECT ?, ?", "1")
    with pytest.raises(TrinoError, match="literal"):
        bind_parameters("SELECT ?", "(SELECT note FROM hospital.patients)")
    with pytest.raises(TrinoError, match="literal"):
        bind_parameters("SELECT ?", "1 + 1")


def test_dataset_tables_go_to_the_dp_path_qualified():
    plan = plan_statement('SELECT COUNT(*) FROM "sqlgate"."hospital"."patients"', SESSION, VIEW)
    assert plan == DPQuery('SELECT COUNT(*) FROM "hospital"."patients"')
    plan = plan_statement("WITH p AS (SELECT age FROM patients) SELECT AVG(age) FROM p",
                          SESSION, VIEW)
    assert isinstance(plan, DPQuery) and "hospital.patients" in plan.sql
    assert " p" in plan.sql and "hospital.p " not in plan.sql


def test_catalog_queries_run_on_metadata_only():
    plan = plan_statement("SELECT table_name FROM information_schema.tables t "
                          "WHERE t.table_schema = 'hospital'", SESSION, VIEW)
    assert isinstance(plan, SandboxQuery)
    assert run_in_sandbox(plan.sql, plan.views, VIEW).rows == [("patients",)]
    plan = plan_statement("SELECT COUNT(*) FROM system.jdbc.tables", SESSION, VIEW)
    assert run_in_sandbox(plan.sql, plan.views, VIEW).rows[0][0] >= 1
    with pytest.raises(TrinoError, match="does not exist"):
        plan_statement("SELECT * FROM information_schema.nope", SESSION, VIEW)
    with pytest.raises(TrinoError, match="combine"):
        plan_statement("SELECT COUNT(*) FROM patients WHERE region IN "
                       "(SELECT table_name FROM information_schema.tables)", SESSION, VIEW)


def test_session_statements():
    plan = plan_statement("SET SESSION epsilon = 0.5;", SESSION, VIEW)
    assert plan == StaticResult(headers={"X-Trino-Set-Session": "epsilon=0.5"},
                                update_type="SET SESSION")
    with pytest.raises(TrinoError):
        plan_statement("SET SESSION epsilon = 'lots'", SESSION, VIEW)
    with pytest.raises(TrinoError):
        plan_statement("SET SESSION other = 1", SESSION, VIEW)
    plan = plan_statement("RESET SESSION epsilon", SESSION, VIEW)
    assert plan.headers == {"X-Trino-Clear-Session": "epsilon"}
    with pytest.raises(SqlSyntaxError):
        plan_statement("SHOW TABLES LIKE", SESSION, VIEW)
    with pytest.raises(TrinoError, match="does not exist"):
        plan_statement("DESCRIBE hospital.missing", SESSION, VIEW)


@pytest.mark.parametrize("sql", [
    "SELECT cardinality(sequence(1, 3000000000))",       # would allocate a huge list
    "SELECT repeat('x', 100000000)",
    "SELECT * FROM UNNEST(ARRAY[1, 2])",
    "SELECT current_setting('threads')",
    "SELECT table_name FROM information_schema.tables WHERE regexp_like(table_name, 'p')",
])
def test_catalog_queries_only_use_plain_sql(sql):
    with pytest.raises(TrinoError, match="not supported in catalog queries"):
        plan_statement(sql, SESSION, VIEW)


def test_catalog_query_engine_limits():
    plan = plan_statement("SELECT x FROM (VALUES 1, 2) t(x) ORDER BY x", SESSION, VIEW)
    assert run_in_sandbox(plan.sql, plan.views, VIEW).rows == [(1,), (2,)]
    # A cross product of catalog views runs into the sandbox's time limit, not the server's.
    plan = plan_statement("SELECT SUM(length(a.column_name) + length(f.column_name)) "
                          "FROM information_schema.columns a, "
                          "information_schema.columns b, information_schema.columns c, "
                          "information_schema.columns d, information_schema.columns e, "
                          "information_schema.columns f", SESSION, VIEW)
    with pytest.raises(TrinoError, match="too long") as err:
        run_in_sandbox(plan.sql, plan.views, VIEW, timeout_s=0.2)
    assert err.value.trino_code.name == "EXCEEDED_TIME_LIMIT"


@pytest.mark.parametrize("sql", [
    "SELECT " + "(" * 3000 + "1" + ")" * 3000,
    "SELECT COUNT(*) FROM patients WHERE " + "(" * 3000 + "age > 1" + ")" * 3000,
])
def test_deeply_nested_statements_are_a_clear_error(sql):
    # Review finding: sqlglot's RecursionError became a generic internal error.
    from sqlgate.errors import UnsupportedQuery
    with pytest.raises(UnsupportedQuery, match="nested too deeply"):
        plan_statement(sql, SESSION, VIEW)


def test_self_executing_prepared_statement_is_a_clear_error():
    # Review finding: a prepared statement `p = EXECUTE p` (client-supplied header) recursed
    # until Python's RecursionError, answered as an internal error.
    from dataclasses import replace
    from sqlgate.errors import UnsupportedQuery
    session = replace(SESSION, prepared={"p": "EXECUTE p"})
    with pytest.raises(UnsupportedQuery, match="too deeply"):
        plan_statement("EXECUTE p", session, VIEW)
    session = replace(SESSION, prepared={"q": "SELECT COUNT(*) FROM patients"})
    assert isinstance(plan_statement("EXECUTE q", session, VIEW), DPQuery)


def test_large_catalog_views_load_completely():
    # Views are bulk-loaded into the sandbox now (executemany was one statement per row).
    from sqlgate.metadata import parse_dataset
    metas = tuple(parse_dataset({"dataset": f"d{i}", "tables": {
        f"t{j}": {"privacy_unit": "c0", "columns": {
            f"c{k}": ("int" if k % 2 else "string") for k in range(30)}} for j in range(5)}})
        for i in range(8))
    view = CatalogView(metas, "ann")
    table = run_in_sandbox(
        'SELECT data_type, count(*), max(ordinal_position) FROM "trino__information_schema__'
        'columns" WHERE table_schema <> \'information_schema\' GROUP BY 1 ORDER BY 1',
        [("sqlgate", "information_schema", "columns")], view)
    assert table.rows == [("bigint", 600, 30), ("varchar", 600, 29)]
    jdbc = run_in_sandbox('SELECT count(*), count(decimal_digits), sum(nullable) FROM '
                          '"trino__jdbc__columns" WHERE table_schem LIKE \'d%\'',
                          [("sqlgate", "jdbc", "columns")], view)
    assert jdbc.rows == [(1200, 600, 1160)]


def test_huge_statements_are_refused_before_tokenizing():
    from rewriter.parse import MAX_SQL_LENGTH
    from sqlgate.errors import UnsupportedQuery
    huge = "SELECT 1 WHERE 1 IN (" + ",".join("1" for _ in range(MAX_SQL_LENGTH)) + ")"
    with pytest.raises(UnsupportedQuery, match="longer than"):
        plan_statement(huge, SESSION, VIEW)

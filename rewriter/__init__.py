"""SQL -> DP plan, as pure functions over sqlglot trees. Never touches data."""
from __future__ import annotations

from rewriter.parse import parse_select, parse_statements
from rewriter.plan import DPPlan, KeyRelease, Measure, OutputColumnSpec, QuantileMeasure, Sensitivity
from rewriter.planner import plan_select
from rewriter.scope import TableResolver


def plan_query(sql: str, resolve_table: TableResolver) -> DPPlan:
    select = parse_select(sql)
    canonical = select.sql(dialect="duckdb", normalize=True)
    return plan_select(select, resolve_table, canonical_sql=canonical)


def transpile(sql: str, dialect: str) -> str:
    """Bounded SQL (DuckDB dialect) for another engine (postgres, spark, ...)."""
    import sqlglot
    return sqlglot.transpile(sql, read="duckdb", write=dialect)[0]


__all__ = ["DPPlan", "KeyRelease", "Measure", "OutputColumnSpec", "Sensitivity", "plan_query",
           "parse_select", "parse_statements", "transpile"]

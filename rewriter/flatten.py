"""Inline row-level CTEs and FROM-subqueries, so the planner sees one SELECT over tables.

A CTE or subquery that only selects and filters rows (no aggregation, DISTINCT, LIMIT or
window) is merged into the outer query by sqlglot's optimizer; the unit column need not be
projected because the merged query reads the base tables. Anything that cannot be merged is
refused: an aggregating subquery would produce per-unit values whose bounds are unknown.
"""
from __future__ import annotations

from sqlglot import exp
from sqlglot.errors import OptimizeError, SqlglotError
from sqlglot.optimizer.eliminate_ctes import eliminate_ctes
from sqlglot.optimizer.merge_subqueries import merge_subqueries
from sqlglot.optimizer.qualify import qualify

from sqlgate.errors import UnsupportedQuery

_SQL_TYPES = {"int": "BIGINT", "float": "DOUBLE", "string": "VARCHAR", "bool": "BOOLEAN",
              "date": "DATE"}


def flatten(select: exp.Select, resolve_table) -> exp.Select:
    if not _has_derived_tables(select):
        return select
    select = select.copy()
    cte_names = {cte.alias.lower() for cte in (select.args.get("with_").expressions
                                               if select.args.get("with_") else [])}
    schema: dict = {}
    for table in select.find_all(exp.Table):
        if not table.args.get("db") and table.name.lower() in cte_names:
            continue
        dataset, meta = resolve_table(table)
        table.set("db", exp.to_identifier(dataset.name))
        table.set("this", exp.to_identifier(meta.name))
        schema.setdefault(dataset.name, {})[meta.name] = {
            c.name: _SQL_TYPES[c.type] for c in meta.columns.values()}
    _name_outputs(select)
    try:
        qualified = qualify(select, schema=schema, dialect="postgres", expand_stars=False,
                            validate_qualify_columns=False, quote_identifiers=False,
                            identify=False)
        merged = eliminate_ctes(merge_subqueries(qualified))
    except (OptimizeError, SqlglotError):
        raise UnsupportedQuery("this combination of CTEs/subqueries is not supported") from None
    if _has_derived_tables(merged):
        raise UnsupportedQuery("CTEs and subqueries in FROM are supported only when they "
                               "select rows (no aggregation, DISTINCT, LIMIT or window "
                               "functions); aggregate in the outer query instead")
    return merged


def _has_derived_tables(select: exp.Select) -> bool:
    if select.args.get("with_"):
        return True
    return any(isinstance(node, exp.Subquery) for node in select.walk() if node is not select)


def _name_outputs(select: exp.Select) -> None:
    """Give unnamed projections their PostgreSQL-style names before qualify renames them."""
    from rewriter.planner import _default_name

    for index, item in enumerate(select.expressions):
        if not isinstance(item, exp.Alias) and not isinstance(item, exp.Star):
            select.expressions[index].replace(exp.alias_(item.copy(), _default_name(item)))

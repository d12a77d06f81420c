"""Sum values computed once at load instead of in every query (DuckDB catalog only).

A sum measure over a bounded column adds, per row, the value clamped to the declared bounds,
scaled to fixed point and rounded (rewriter/planner.py `fixed_point_sum`). That per-row
expression was most of the engine time left in simple DP sums (TPC-H SF 0.1 orders: raw
SUM 0.37 ms, clamped fixed-point SUM 0.88 ms, SUM of the same integers stored 0.36 ms). So
when the catalog stores a private table, it also stores that integer for every bounded
numeric column, in a hidden BIGINT column (`metadata.stored_sum_column`, a name no declared
column can have), computed over the stored rows by the planner's very own expression, and
records the encoding used (`TableMeta.stored_sums`). The planner reads the hidden column
only while the encoding it would use is exactly the recorded one; the values are equal on
every row, so sensitivity, noise and answers do not change.

Never visible: the planner resolves analyst columns against the metadata only, catalog
listings (PG wire, Trino, HTTP) come from metadata, and approved exact SQL reads each table
through its declared columns (`declared_columns_only`).

Absent elsewhere: tables whose rows live in another engine get none (`Catalog.add` with
`unique_columns`), switching the gateway to another engine forgets them
(`Catalog.forget_stored_sums`), and federated plans are made without them
(`without_stored_sums`), as the router plans from the shared metadata alone.

Cost (TPC-H SF 1 orders + lineitem, 6 bounded columns): DuckDB memory 738 -> 970 MiB in
memory (+31%), 115 -> 175 MiB on disk; load time unchanged within noise (8-12 s).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Callable, Mapping

from sqlglot import exp

from rewriter.planner import fixed_point_sum, storable_sum_encoding
from sqlgate.metadata import DatasetMeta, StoredSum, TableMeta, stored_sum_column


def planned_sums(table: TableMeta) -> dict[str, StoredSum]:
    """The columns of `table` to store sums for, with their encoding: every bounded numeric
    column of a private table (public tables are not bounded per unit, nor hot)."""
    if table.public:
        return {}
    sums = {}
    for name, column in table.columns.items():
        encoding = storable_sum_encoding(column)
        if encoding is not None:
            sums[name] = encoding
    return sums


def with_sum_columns(kept_rows_sql: str, sums: Mapping[str, StoredSum]) -> str:
    """A SELECT of the rows `kept_rows_sql` returns (the declared columns of the stored rows,
    after ingest truncation) plus one hidden column per entry of `sums`."""
    if not sums:
        return kept_rows_sql
    hidden = ", ".join(
        exp.alias_(fixed_point_sum(exp.column(name, table="__kept", quoted=True), encoding),
                   stored_sum_column(name, encoding), quoted=True).sql(dialect="duckdb")
        for name, encoding in sums.items())
    return f'SELECT "__kept".*, {hidden} FROM ({kept_rows_sql}) AS "__kept"'


def sums_to_json(meta: DatasetMeta) -> dict[str, dict[str, dict[str, Any]]]:
    return {t.name: {c: {"lower": s.lower, "upper": s.upper, "bits": s.bits,
                         "nullable": s.nullable} for c, s in t.stored_sums.items()}
            for t in meta.tables.values() if t.stored_sums}


def sums_from_json(meta: DatasetMeta, saved: Any, stored_columns: Mapping[str, set[str]]
                   ) -> dict[str, dict[str, StoredSum]]:
    """The recorded encodings of a saved catalog, kept only where they still make sense: a
    declared bounded numeric column of a private table whose hidden column, named after that
    very encoding, exists in the stored table (`stored_columns`: table -> column names).
    Anything malformed is dropped: the planner then computes the expression, as for
    catalogs saved before this existed."""
    sums: dict[str, dict[str, StoredSum]] = {}
    if not isinstance(saved, Mapping):
        return sums
    for table_name, columns in saved.items():
        table = meta.tables.get(str(table_name))
        if table is None or table.public or not isinstance(columns, Mapping):
            continue
        present = stored_columns.get(table.name, set())
        for name, spec in columns.items():
            column = table.columns.get(str(name))
            encoding = _encoding(spec)
            if (column is None or not column.is_numeric or encoding is None
                    or stored_sum_column(column.name, encoding) not in present):
                continue
            sums.setdefault(table.name, {})[column.name] = encoding
    return sums


def _encoding(spec: Any) -> StoredSum | None:
    if not isinstance(spec, Mapping):
        return None
    lower, upper, bits, nullable = (spec.get(k) for k in ("lower", "upper", "bits", "nullable"))
    if (any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (lower, upper))
            or isinstance(bits, bool) or not isinstance(bits, int)
            or not isinstance(nullable, bool)):
        return None
    try:
        lower, upper = float(lower), float(upper)
    except OverflowError:  # an integer past any float
        return None
    if not (math.isfinite(lower) and math.isfinite(upper)):
        return None
    return StoredSum(lower, upper, bits, nullable)


def with_stored_sums(meta: DatasetMeta, sums: Mapping[str, Mapping[str, StoredSum]]
                     ) -> DatasetMeta:
    tables = {name: replace(table, stored_sums=dict(sums.get(name, {})))
              for name, table in meta.tables.items()}
    return replace(meta, tables=tables)


def without_stored_sums(resolve_table: Callable[[exp.Table], tuple[DatasetMeta, TableMeta]]):
    """`resolve_table` whose tables carry none of the catalog's hidden columns (stored sums,
    and the stored truncation rank of sqlgate/stored_rank.py): the plan every engine can
    run, and every federation peer makes alike from the shared metadata (a domain's bounded
    SQL is part of the federated plan's fingerprint, server/router/protocol.py)."""
    def resolve(node: exp.Table) -> tuple[DatasetMeta, TableMeta]:
        dataset, table = resolve_table(node)
        return dataset, replace(table, stored_sums={}, stored_rank=None)
    return resolve


def declared_columns_only(select: exp.Expression, tables: list[tuple[exp.Table, TableMeta]]
                          ) -> exp.Expression:
    """Owner-approved exact SQL (`Gateway.run_exact`) reading each dataset table of `tables`
    (nodes of `select`, named `"schema"."table"`) through its declared columns only, under
    the name the query gives it: `SELECT *` returns the declared columns and a hidden column
    is unknown. Column references qualified with the schema (`d.t.x`) keep working: they
    name the table by that name."""
    schemas = {node.args["db"].name.lower() for node, _ in tables if node.args.get("db")}
    for column in list(select.find_all(exp.Column)):
        db = column.args.get("db")
        if db is not None and db.name.lower() in schemas and not column.args.get("catalog"):
            column.set("db", None)
    for node, table in tables:
        source = exp.Table(this=node.this.copy(),
                           db=node.args["db"].copy() if node.args.get("db") else None)
        columns = [exp.column(name, quoted=True) for name in table.columns]
        alias = exp.to_identifier(node.alias or node.name, quoted=True)
        node.replace(exp.select(*columns).from_(source).subquery(alias))
    return select

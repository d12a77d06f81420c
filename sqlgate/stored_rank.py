"""Query-time truncation ranks computed once at load (DuckDB catalog only).

A table declaring `max_rows_per_unit: k` is read by every query through a per-unit
truncation (rewriter/truncation.py `truncated_read`): a unit keeps its k rows first by the
truncation rule. Ranking per query, even only the units over k, cost ~4 ms over a 2.7 ms raw
GROUP BY on TPC-H SF 0.1 orders. The position of a row within its unit by that rule does not
depend on k, so when the catalog stores a table truncated at query time it also stores that
position (`rewriter.truncation.rank_value`, over the stored rows, the module's own rule) in a
hidden column (`stored_rank_column`), and records it (`TableMeta.stored_rank`). The read is
then `WHERE rank <= k`: the same rows, by the same rule.

Never visible, exactly like the stored sums (sqlgate/stored_sums.py): analyst columns
resolve against the metadata only, listings come from metadata, approved exact SQL reads
the declared columns only (`declared_columns_only`). Absent elsewhere: tables whose rows
live in another engine get none, switching engines forgets it
(`Catalog.forget_stored_columns`), federated plans are made without it
(`stored_sums.without_stored_sums`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from sqlglot import exp

from rewriter.truncation import rank_value, stored_rank_column
from sqlgate.metadata import DatasetMeta, TableMeta

_KEPT = "__ranked"


def planned_rank(table: TableMeta) -> str | None:
    """The rank column to store for `table`: tables read through a query-time truncation."""
    if not table.truncated_at_query_time or table.privacy_unit is None:
        return None
    return stored_rank_column(table)


def with_rank_column(stored_rows_sql: str, table: TableMeta) -> str:
    """A SELECT of the rows `stored_rows_sql` returns (the rows the table stores, declared
    columns first) plus the rank column, when the table gets one."""
    name = planned_rank(table)
    if name is None:
        return stored_rows_sql
    rank = exp.alias_(rank_value(table, _KEPT), name, quoted=True).sql(dialect="duckdb")
    return f'SELECT "{_KEPT}".*, {rank} FROM ({stored_rows_sql}) AS "{_KEPT}"'


def ranks_to_json(meta: DatasetMeta) -> dict[str, str]:
    return {t.name: t.stored_rank for t in meta.tables.values() if t.stored_rank}


def ranks_from_json(meta: DatasetMeta, saved: Any, stored_columns: Mapping[str, set[str]]
                    ) -> dict[str, str]:
    """The recorded rank columns of a saved catalog, kept only where the current metadata
    still truncates the table at query time, names the very same column (same rule, same
    inputs), and the stored table holds it (`stored_columns`: table -> column names).
    Anything else is dropped: queries then rank per query, as for catalogs saved before."""
    ranks: dict[str, str] = {}
    if not isinstance(saved, Mapping):
        return ranks
    for table_name, column in saved.items():
        table = meta.tables.get(str(table_name))
        if table is None or not isinstance(column, str):
            continue
        if column == planned_rank(table) and column in stored_columns.get(table.name, set()):
            ranks[table.name] = column
    return ranks


def with_stored_ranks(meta: DatasetMeta, ranks: Mapping[str, str]) -> DatasetMeta:
    tables = {name: replace(table, stored_rank=ranks.get(name))
              for name, table in meta.tables.items()}
    return replace(meta, tables=tables)

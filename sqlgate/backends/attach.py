"""Make an embedded Gateway run its bounded SQL on another engine.

The Gateway builds its own DuckDB executor and its catalog loads data into DuckDB. For data
that lives in PostgreSQL or Spark, the gateway only needs the metadata (planning, budgets) and
an executor to run the rewritten SQL; these helpers compose that from Gateway's public
attributes until the Gateway takes an `executor=` argument itself (see the report).
"""
from __future__ import annotations

from typing import Mapping

import pandas as pd

from sqlgate.catalog import distinct_columns, public_key_candidates, require_distinct
from sqlgate.errors import DataLoadError
from sqlgate.executor import DuckDBExecutor
from sqlgate.metadata import DatasetMeta, enforced_key_columns

_EMPTY_DTYPES = {"int": "Int64", "float": "float64", "string": "string", "bool": "boolean",
                 "date": "datetime64[s]"}


def use_executor(gateway, executor):
    """Route gateway.query / run_exact to `executor` (which accepts DuckDB-dialect SQL and
    translates it). Returns the previous executor, which the caller may close."""
    previous = gateway.executor
    if not isinstance(executor, DuckDBExecutor):
        gateway.catalog.forget_stored_columns()  # that engine has no stored sums or ranks
    gateway.executor = executor
    return previous


def add_external_dataset(gateway, meta: DatasetMeta, *, replace: bool = False,
                         engine=None) -> DatasetMeta:
    """Register a dataset whose rows live in the external engine: metadata and budgets only
    (its tables are created empty in the gateway's DuckDB, which no query reads any more).

    What the planner takes from a table's content is established on `engine`, the executor
    that holds the rows, never on the empty stand-ins (where every column is vacuously
    distinct, and a public join on a repeated key would keep the direct path): the unique
    columns of public tables, and the keys a `unit_via` truncation relies on (refused unless
    distinct). Without an engine that holds the rows (None, or the gateway's own DuckDB),
    public tables get no unique columns, and keys cannot be proved: refused."""
    unique = _content_facts(engine, meta)
    empty = {name: _empty_frame(table) for name, table in meta.tables.items()}
    return gateway.add_dataset(meta, empty, replace=replace, unique_columns=unique)


def attach(gateway, executor, meta: DatasetMeta, sources: Mapping[str, pd.DataFrame] | None = None):
    """Load `sources` into the executor's engine (if given), register `meta`, switch engines."""
    if sources is not None:
        executor.load_dataset(meta, sources)
    add_external_dataset(gateway, meta, engine=executor)
    return use_executor(gateway, executor)


def _content_facts(engine, meta: DatasetMeta) -> dict[str, frozenset[str]]:
    keys = enforced_key_columns(meta)
    if engine is None or isinstance(engine, DuckDBExecutor):
        if keys:
            table = next(iter(sorted(keys)))
            raise DataLoadError(f"table '{table}': its key column(s) "
                                f"{', '.join(sorted(keys[table]))} must be proved distinct on "
                                "the engine that holds the rows; pass engine= (or use attach)")
        return {}
    def fetch_row(sql: str) -> tuple:
        return tuple(bool(v) for v in engine.run(sql).rows[0])

    facts: dict[str, frozenset[str]] = {}
    for table in meta.tables.values():
        relation = f'"{meta.name}"."{table.name}"'
        if table.public:
            facts[table.name] = distinct_columns(fetch_row, relation, public_key_candidates(table))
        elif table.name in keys:
            require_distinct(fetch_row, relation, table, keys[table.name])
            facts[table.name] = keys[table.name]
    return facts


def _empty_frame(table) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series([], dtype=_EMPTY_DTYPES[col.type])
                         for name, col in table.columns.items()})

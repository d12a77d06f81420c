"""Make an embedded Gateway run its bounded SQL on another engine.

The Gateway builds its own DuckDB executor and its catalog loads data into DuckDB. For data
that lives in PostgreSQL or Spark, the gateway only needs the metadata (planning, budgets) and
an executor to run the rewritten SQL; these helpers compose that from Gateway's public
attributes until the Gateway takes an `executor=` argument itself (see the report).
"""
from __future__ import annotations

from typing import Mapping

import pandas as pd

from sqlgate.catalog import UNIQUE_TYPES, key_refusal
from sqlgate.errors import DataLoadError
from sqlgate.executor import DuckDBExecutor
from sqlgate.metadata import DatasetMeta, enforced_key_columns

_EMPTY_DTYPES = {"int": "Int64", "float": "float64", "string": "string", "bool": "boolean",
                 "date": "datetime64[s]"}


def use_executor(gateway, executor):
    """Route gateway.query / run_exact to `executor` (which accepts DuckDB-dialect SQL and
    translates it). Returns the previous executor, which the caller may close."""
    previous = gateway.executor
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
    facts: dict[str, frozenset[str]] = {}
    for table in meta.tables.values():
        if table.public:
            candidates = [c.name for c in table.columns.values() if c.type in UNIQUE_TYPES]
        else:
            candidates = sorted(keys.get(table.name, ()))
        if not candidates:
            continue
        checks = ", ".join(f'COUNT("{c}") = COUNT(DISTINCT "{c}")' for c in candidates)
        row = engine.run(f'SELECT {checks} FROM "{meta.name}"."{table.name}"').rows[0]
        distinct = frozenset(c for c, ok in zip(candidates, row) if bool(ok))
        if not table.public:
            repeated = sorted(set(candidates) - distinct)
            if repeated:
                raise DataLoadError(key_refusal(table, repeated))
        facts[table.name] = distinct
    return facts


def _empty_frame(table) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series([], dtype=_EMPTY_DTYPES[col.type])
                         for name, col in table.columns.items()})

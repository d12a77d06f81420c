"""Make an embedded Gateway run its bounded SQL on another engine.

The Gateway builds its own DuckDB executor and its catalog loads data into DuckDB. For data
that lives in PostgreSQL or Spark, the gateway only needs the metadata (planning, budgets) and
an executor to run the rewritten SQL; these helpers compose that from Gateway's public
attributes until the Gateway takes an `executor=` argument itself (see the report).
"""
from __future__ import annotations

from typing import Mapping

import pandas as pd

from sqlgate.metadata import DatasetMeta

_EMPTY_DTYPES = {"int": "Int64", "float": "float64", "string": "string", "bool": "boolean",
                 "date": "datetime64[s]"}


def use_executor(gateway, executor):
    """Route gateway.query / run_exact to `executor` (which accepts DuckDB-dialect SQL and
    translates it). Returns the previous executor, which the caller may close."""
    previous = gateway.executor
    gateway.executor = executor
    return previous


def add_external_dataset(gateway, meta: DatasetMeta, *, replace: bool = False) -> DatasetMeta:
    """Register a dataset whose rows live in the external engine: metadata and budgets only
    (its tables are created empty in the gateway's DuckDB, which no query reads any more)."""
    empty = {name: _empty_frame(table) for name, table in meta.tables.items()}
    return gateway.add_dataset(meta, empty, replace=replace)


def attach(gateway, executor, meta: DatasetMeta, sources: Mapping[str, pd.DataFrame] | None = None):
    """Load `sources` into the executor's engine (if given), register `meta`, switch engines."""
    if sources is not None:
        executor.load_dataset(meta, sources)
    add_external_dataset(gateway, meta)
    return use_executor(gateway, executor)


def _empty_frame(table) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series([], dtype=_EMPTY_DTYPES[col.type])
                         for name, col in table.columns.items()})

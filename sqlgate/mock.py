"""Mock tables generated from metadata alone (types, bounds, key sets), never from rows.

Analysts develop queries against them and owners dry-run requests on them; nothing in a
mock table depends on the private data.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from sqlgate.errors import InvalidParameter, UndefinedTable
from sqlgate.metadata import ColumnMeta, DatasetMeta, TableMeta

_DEFAULT_INT_RANGE = (0, 1000)
_DEFAULT_FLOAT_RANGE = (0.0, 1000.0)
_DATE_START = dt.date(2000, 1, 1)
_DATE_DAYS = 365 * 25


MAX_MOCK_ROWS = 100_000


def mock_dataset_table(meta: DatasetMeta, table: str, rows: int = 100,
                       seed: int = 0) -> pd.DataFrame:
    """`mock_table` for a table named by an analyst, with its checks (gateway and router)."""
    table_meta = meta.table(table)
    if table_meta is None:
        raise UndefinedTable(f"table '{meta.name}.{table}' does not exist")
    if not 1 <= rows <= MAX_MOCK_ROWS:
        raise InvalidParameter(f"rows must be between 1 and {MAX_MOCK_ROWS}")
    return mock_table(table_meta, rows=rows, seed=seed)


def mock_table(table: TableMeta, rows: int = 100, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    data = {}
    for col in table.columns.values():
        if col.name == table.privacy_unit:
            units = max(1, rows // max(1, table.max_rows_per_group))
            data[col.name] = rng.integers(1, units + 1, size=rows)
        else:
            data[col.name] = _mock_column(col, rows, rng)
    return pd.DataFrame(data)


def _mock_column(col: ColumnMeta, rows: int, rng: np.random.Generator):
    if col.public_keys is not None:
        keys = list(col.public_keys)
        return [keys[i] for i in rng.integers(0, len(keys), size=rows)]
    if col.type == "int":
        low, high = (col.lower, col.upper) if col.has_bounds else _DEFAULT_INT_RANGE
        return rng.integers(int(np.ceil(low)), int(np.floor(high)) + 1, size=rows)
    if col.type == "float":
        low, high = (col.lower, col.upper) if col.has_bounds else _DEFAULT_FLOAT_RANGE
        return np.round(rng.uniform(low, high, size=rows), 3)
    if col.type == "bool":
        return rng.integers(0, 2, size=rows).astype(bool)
    if col.type == "date":
        return [_DATE_START + dt.timedelta(days=int(d)) for d in rng.integers(0, _DATE_DAYS, size=rows)]
    return [f"{col.name}_{i}" for i in rng.integers(0, max(2, rows // 4), size=rows)]

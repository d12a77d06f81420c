"""Owner-side loading of pandas frames into an external engine: checked against metadata.

The same checks as the DuckDB catalog (every declared column present, values of the declared
type, no NULL where the metadata forbids it, distinct keys where a child truncates through
unit_via) and the same ingest truncation: at most `truncate_rows_per_unit` rows per unit,
chosen by a hash of the row (never its position). The truncation runs in an in-process
DuckDB with the catalog's own SQL (rewriter/truncation.py `ingest_truncation_sql`), so an
external engine stores exactly the rows the DuckDB catalog would. The truncation (and the
enforced keys) are what let the rewriter plan the direct path, so an external table declared
with it must have been loaded through here (or be truncated by its owner the same way).
Error messages carry counts and column names only, never values.
"""
from __future__ import annotations

import datetime as dt
import math
from typing import Any, Iterable

import duckdb
import pandas as pd
import pyarrow as pa

from rewriter.truncation import ingest_truncation_sql
from sqlgate.catalog import check_keys
from sqlgate.errors import DataLoadError
from sqlgate.metadata import DatasetMeta, TableMeta, enforced_key_columns, load_order

PG_TYPES = {"int": "BIGINT", "float": "DOUBLE PRECISION", "string": "TEXT", "bool": "BOOLEAN",
            "date": "DATE"}


_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "string": pa.string(),
                "bool": pa.bool_(), "date": pa.date32()}


def table_rows(table: TableMeta, frame: pd.DataFrame) -> list[tuple]:
    """The frame's rows as typed Python tuples in metadata column order, checked + truncated.
    A unit_via table truncated through its parent needs the parent: use dataset_rows."""
    if table.unit_via is not None and table.truncate_rows_per_unit:
        raise DataLoadError(f"table '{table.name}' is truncated per unit through "
                            f"'{table.unit_via.table}': load it with its dataset")
    rows = checked_rows(table, frame)
    if table.truncate_rows_per_unit and table.privacy_unit:
        with _Engine() as engine:
            engine.put(table, "__c", rows)
            rows = engine.rows(ingest_truncation_sql(table, '"__c"'))
    return rows


def checked_rows(table: TableMeta, frame: pd.DataFrame) -> list[tuple]:
    """The frame's rows as typed Python tuples in metadata column order, checked only."""
    names = {str(c).lower(): c for c in frame.columns}
    missing = [c for c in table.columns if c not in names]
    if missing:
        raise DataLoadError(f"table '{table.name}': the data has no column(s) "
                            f"{', '.join(missing)} declared in the metadata")
    columns = list(table.columns.values())
    converted = []
    problems = []
    for col in columns:
        values, bad = _convert(frame[names[col.name]].tolist(), col.type)
        if bad:
            problems.append(f"column '{col.name}': {bad} value(s) are not of type {col.type}")
        nulls = sum(v is None for v in values)
        if nulls and (not col.nullable or col.name == table.privacy_unit):
            what = "the privacy unit" if col.name == table.privacy_unit else "declared not nullable"
            problems.append(f"column '{col.name}': {nulls} NULL value(s), but it is {what}")
        converted.append(values)
    if problems:
        raise DataLoadError(f"table '{table.name}' does not match its metadata: " + "; ".join(problems))
    return list(zip(*converted)) if converted else []


def dataset_rows(meta: DatasetMeta, sources: dict[str, pd.DataFrame]) -> dict[str, list[tuple]]:
    unknown = set(sources) - set(meta.tables)
    if unknown:
        raise DataLoadError(f"data given for undeclared table(s): {', '.join(sorted(unknown))}")
    absent = [t for t in meta.tables if t not in sources]
    if absent:
        raise DataLoadError(f"no data given for table(s): {', '.join(sorted(absent))}")
    rows = {name: checked_rows(meta.tables[name], frame) for name, frame in sources.items()}
    keys = enforced_key_columns(meta)
    truncated = {t.name for t in meta.tables.values()
                 if t.truncate_rows_per_unit and (t.privacy_unit or t.unit_via)}
    if not truncated and not keys:
        return rows
    with _Engine() as engine:
        # Parents first (load_order): a unit_via child is truncated against the parent's
        # stored (possibly truncated) rows, exactly as the DuckDB catalog does.
        for table in load_order(meta):
            if table.name not in truncated and table.name not in keys:
                continue
            staged = f"__staged_{table.name}"
            engine.put(table, staged, rows[table.name])
            check_keys(engine.connection, f'"{staged}"', table, keys.get(table.name, frozenset()))
            if table.name in truncated:
                parent = meta.tables[table.unit_via.table] if table.unit_via else None
                stored = f'"__stored_{parent.name}"' if parent is not None else None
                rows[table.name] = engine.rows(ingest_truncation_sql(
                    table, f'"{staged}"', parent, stored))
            if table.name in keys:  # a parent: its children join its stored rows
                engine.put(table, f"__stored_{table.name}", rows[table.name])
    return rows


class _Engine:
    """An in-process DuckDB holding typed rows, to run the catalog's truncation SQL."""

    def __enter__(self) -> "_Engine":
        self._conn = duckdb.connect(":memory:")
        return self

    def __exit__(self, *exc) -> None:
        self._conn.close()

    def put(self, table: TableMeta, name: str, rows: list[tuple]) -> None:
        columns = list(table.columns.values())
        arrow = pa.table({c.name: pa.array([r[i] for r in rows], type=_ARROW_TYPES[c.type])
                          for i, c in enumerate(columns)})
        self._conn.register("__incoming", arrow)
        try:
            self._conn.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM "__incoming"')
        finally:
            self._conn.unregister("__incoming")

    @property
    def connection(self):
        return self._conn

    def rows(self, sql: str) -> list[tuple]:
        return self._conn.execute(sql).fetchall()


def _convert(values: Iterable[Any], type_name: str) -> tuple[list[Any], int]:
    out, bad = [], 0
    for value in values:
        if _is_null(value):
            out.append(None)
            continue
        try:
            out.append(_CONVERTERS[type_name](value))
        except (TypeError, ValueError, OverflowError):
            out.append(None)
            bad += 1
    return out, bad


def _is_null(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("not an integer")
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    result = int(value)
    if not -(1 << 63) <= result < (1 << 63):
        raise OverflowError("outside BIGINT")
    return result


def _to_float(value: Any) -> float:
    result = float(value)
    if not math.isfinite(result):
        raise ValueError("not finite")
    return result


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "t", "1", "yes"):
            return True
        if lowered in ("false", "f", "0", "no"):
            return False
        raise ValueError("not a boolean")
    return bool(value)


def _to_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if hasattr(value, "to_pydatetime"):
        return value.to_pydatetime().date()
    return dt.date.fromisoformat(str(value)[:10])


_CONVERTERS = {"int": _to_int, "float": _to_float, "string": str, "bool": _to_bool,
               "date": _to_date}

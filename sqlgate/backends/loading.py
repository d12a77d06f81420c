"""Owner-side loading of pandas frames into an external engine: checked against metadata.

The same checks as the DuckDB catalog (every declared column present, values of the declared
type, no NULL where the metadata forbids it) and the same ingest truncation: at most
`truncate_rows_per_unit` rows per unit, chosen by a hash of the row (never its position).
The truncation is what lets the rewriter plan the direct path, so an external table declared
with it must have been loaded through here (or be truncated by its owner the same way).
Error messages carry counts and column names only, never values.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import math
from typing import Any, Iterable

import pandas as pd

from sqlgate.errors import DataLoadError
from sqlgate.metadata import DatasetMeta, TableMeta

PG_TYPES = {"int": "BIGINT", "float": "DOUBLE PRECISION", "string": "TEXT", "bool": "BOOLEAN",
            "date": "DATE"}


def table_rows(table: TableMeta, frame: pd.DataFrame) -> list[tuple]:
    """The frame's rows as typed Python tuples in metadata column order, checked + truncated."""
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
    rows = list(zip(*converted)) if converted else []
    if table.truncate_rows_per_unit and table.privacy_unit:
        rows = _truncate(rows, list(table.columns).index(table.privacy_unit),
                         int(table.truncate_rows_per_unit))
    return rows


def dataset_rows(meta: DatasetMeta, sources: dict[str, pd.DataFrame]) -> dict[str, list[tuple]]:
    unknown = set(sources) - set(meta.tables)
    if unknown:
        raise DataLoadError(f"data given for undeclared table(s): {', '.join(sorted(unknown))}")
    absent = [t for t in meta.tables if t not in sources]
    if absent:
        raise DataLoadError(f"no data given for table(s): {', '.join(sorted(absent))}")
    return {name: table_rows(meta.tables[name], frame) for name, frame in sources.items()}


def _truncate(rows: list[tuple], unit_index: int, k: int) -> list[tuple]:
    def digest(row: tuple) -> bytes:
        return hashlib.sha256("\x1f".join(repr(v) for v in row).encode()).digest()
    kept: dict[Any, int] = {}
    out = []
    for row in sorted(rows, key=lambda r: (repr(r[unit_index]), digest(r))):
        seen = kept.get(row[unit_index], 0)
        if seen < k:
            kept[row[unit_index]] = seen + 1
            out.append(row)
    return out


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

"""Trino type names and client type signatures for the values sqlgate returns.

Clients (the Python client's row mapper, JDBC) decode every value from the column's
`type` and `typeSignature`, so both must describe the JSON value exactly.
"""
from __future__ import annotations

import datetime as dt
import decimal
import math
from typing import Any

# Trino's unbounded varchar length, as the coordinator reports it.
VARCHAR_MAX = 2147483647

# sqlgate OutputColumn / ColumnMeta types -> Trino types.
SQLGATE_TO_TRINO = {"int": "bigint", "float": "double", "string": "varchar", "bool": "boolean",
                    "date": "date"}

# java.sql.Types codes, for system.jdbc.columns / types.
JDBC_TYPES = {"bigint": -5, "integer": 4, "smallint": 5, "tinyint": -6, "double": 8, "real": 7,
              "varchar": 12, "boolean": 16, "date": 91, "timestamp": 93, "decimal": 3}

_DUCKDB_TO_TRINO = {
    "BIGINT": "bigint", "HUGEINT": "decimal(38,0)", "UBIGINT": "decimal(20,0)",
    "INTEGER": "integer", "UINTEGER": "bigint", "SMALLINT": "smallint", "USMALLINT": "integer",
    "TINYINT": "tinyint", "UTINYINT": "smallint", "DOUBLE": "double", "FLOAT": "real",
    "VARCHAR": "varchar", "BOOLEAN": "boolean", "DATE": "date", "TIMESTAMP": "timestamp(6)",
    "TIMESTAMP WITH TIME ZONE": "timestamp(6) with time zone", "NULL": "unknown",
    '"NULL"': "unknown",
}


def trino_type_for_sqlgate(type_name: str) -> str:
    return SQLGATE_TO_TRINO.get(type_name, "varchar")


def trino_type_for_duckdb(type_name: str) -> str:
    name = str(type_name).upper()
    if name in _DUCKDB_TO_TRINO:
        return _DUCKDB_TO_TRINO[name]
    if name.startswith("DECIMAL"):
        return name.lower().replace(" ", "")
    # Lists, structs and other engine-specific types only occur in metadata answers built
    # from text columns; show them as text rather than inventing a Trino type.
    return "varchar"


def type_signature(trino_type: str) -> dict:
    """The `typeSignature` object of a column, e.g. varchar -> varchar(2147483647)."""
    base, _, rest = trino_type.partition("(")
    if base == "varchar" and not rest:
        return {"rawType": "varchar", "arguments": [{"kind": "LONG", "value": VARCHAR_MAX}]}
    if rest and base in ("decimal", "varchar", "char", "timestamp", "time"):
        numbers = rest.split(")")[0].split(",")
        return {"rawType": base,
                "arguments": [{"kind": "LONG", "value": int(n)} for n in numbers if n.strip()]}
    if base.startswith("timestamp"):
        return {"rawType": trino_type.split("(")[0], "arguments": []}
    return {"rawType": base, "arguments": []}


def column(name: str, trino_type: str) -> dict:
    return {"name": name, "type": trino_type, "typeSignature": type_signature(trino_type)}


def json_value(value: Any, trino_type: str) -> Any:
    """One value as the Trino protocol encodes it (dates as text, NaN as 'NaN'...)."""
    if value is None:
        return None
    if hasattr(value, "item") and not isinstance(value, (dt.date, dt.datetime)):
        value = value.item()  # numpy scalars
    if trino_type == "varchar" and not isinstance(value, str):
        return str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if trino_type == "bigint" and value.is_integer():
            return int(value)
        return value
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple, dict)):
        return str(value)
    return value

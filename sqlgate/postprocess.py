"""Shared pieces of post-processing: typing released keys and result columns.

Post-processing runs only over public keys and noisy values (after the release), in a small
sandboxed engine of its own, so these helpers never see private rows.
"""
from __future__ import annotations

import duckdb
import pandas as pd
import pyarrow as pa

from sqlgate.errors import UnsupportedQuery

# One row per released cell: the cap stops any expression that slips past the rewriter's
# allow-list from exhausting the server's memory.
POSTPROCESS_MEMORY_LIMIT = "512MB"


def typed_keys(series: pd.Series, type_name: str) -> pd.Series:
    """A key column with the pandas dtype of its declared type (nullable where needed)."""
    if type_name == "int":
        return series.astype("Int64")
    if type_name == "float":
        return series.astype("float64")
    if type_name == "bool":
        return series.astype("boolean")
    if type_name == "date":
        return pd.to_datetime(series).dt.date.astype("object") if len(series) \
            else series.astype("datetime64[s]")
    return series.astype("object") if len(series) else series.astype("string")


def type_from_engine(engine_type: str) -> str:
    """Our column type name (int, float, bool, date, string) for a DuckDB result type."""
    upper = engine_type.upper()
    if "INT" in upper:
        return "int"
    if any(t in upper for t in ("DOUBLE", "FLOAT", "DECIMAL", "REAL")):
        return "float"
    if "BOOL" in upper:
        return "bool"
    if "DATE" in upper or "TIMESTAMP" in upper:
        return "date"
    return "string"


def run_postprocess(conn: duckdb.DuckDBPyConnection, postprocess_sql: str,
                    noisy: pa.Table | pd.DataFrame) -> tuple[list[tuple], list[str]]:
    """Rows and DuckDB types of the post-processing query over the table `noisy`."""
    # As Arrow: DuckDB binds an Arrow table ~5x faster than it scans a pandas frame, and
    # this runs on every query.
    if isinstance(noisy, pd.DataFrame):
        noisy = pa.Table.from_pandas(noisy, preserve_index=False)
    conn.register("noisy", noisy)
    try:
        relation = conn.execute(postprocess_sql)
        types = [str(d[1]) for d in relation.description]
        return relation.fetchall(), types
    except duckdb.Error as err:
        # Only public keys and noisy values are in this engine, so its message is safe;
        # still keep it short and typed.
        raise UnsupportedQuery(f"the query's result expressions could not be computed: "
                               f"{str(err).splitlines()[0][:200]}") from None
    finally:
        conn.unregister("noisy")

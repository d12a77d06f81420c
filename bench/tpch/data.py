"""TPC-H data for the benchmark: generated once per scale by tpchgen-cli (Parquet), then
loaded into a sqlgate Gateway (the owner's path) and into a plain DuckDB (the raw baseline)
with the same column types, so both engines scan identical tables.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from sqlgate.gateway import Gateway
from sqlgate.metadata import DatasetMeta, load_dataset_yaml

TABLES = ("customer", "orders", "lineitem", "nation", "region")
HERE = Path(__file__).resolve().parent
VARIANTS = {"query": HERE / "metadata-query.yaml", "ingest": HERE / "metadata-ingest.yaml"}
_DUCKDB_TYPES = {"int": "BIGINT", "float": "DOUBLE", "string": "VARCHAR", "bool": "BOOLEAN",
                 "date": "DATE"}


def scale_label(scale: float) -> str:
    return f"{scale:g}"


def generate(scale: float, cache_dir: Path) -> dict[str, Path]:
    """Parquet files for every table at `scale`; reuses a complete earlier generation."""
    out = Path(cache_dir).resolve() / f"sf{scale_label(scale)}"
    paths = {t: out / f"{t}.parquet" for t in TABLES}
    if all(p.is_file() for p in paths.values()):
        return paths
    exe = shutil.which("tpchgen-cli")
    if exe is None:
        raise RuntimeError("tpchgen-cli is not installed: pip install tpchgen-cli")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    subprocess.run([exe, "parquet", "-s", str(scale), f"--tables={','.join(TABLES)}",
                    f"--output-dir={partial}"], check=True, capture_output=True)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return paths


def metadata(variant: str) -> DatasetMeta:
    return load_dataset_yaml(VARIANTS[variant])


def gateway(variant: str, paths: dict[str, Path], threads: int) -> Gateway:
    """An in-memory gateway with the TPC-H dataset of one bounding variant."""
    gw = Gateway(threads=threads)
    meta = metadata(variant)
    gw.add_dataset(meta, {t: str(paths[t]) for t in meta.tables})
    return gw


def raw_duckdb(paths: dict[str, Path], threads: int) -> duckdb.DuckDBPyConnection:
    """Plain DuckDB over the full (untruncated) tables, typed as the gateway types them."""
    conn = duckdb.connect(":memory:", config={"threads": threads})
    meta = metadata("query")
    for name, table in meta.tables.items():
        arrow = pq.read_table(paths[name], columns=list(table.columns))
        conn.register("__src", arrow)
        casts = ", ".join(f'CAST("{c}" AS {_DUCKDB_TYPES[col.type]}) AS "{c}"'
                          for c, col in table.columns.items())
        conn.execute(f'CREATE TABLE "{name}" AS SELECT {casts} FROM __src')
        conn.unregister("__src")
    return conn

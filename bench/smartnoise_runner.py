"""Run the benchmark queries through SmartNoise SQL (inside bench/.venv-smartnoise).

Driven over a line protocol on stdin/stdout (see `serve`), so the benchmark can run
SmartNoise's runs interleaved with sqlgate's and raw DuckDB's. It never imports sqlgate: SmartNoise pins an older OpenDP, so it lives in its own virtualenv. The data is
the same Parquet with the same column types. Two engines (job["engine"]):
  duckdb  SmartNoise talks to DuckDB (same thread count) through its PostgreSQL reader and
          a thin DB-API adapter below: both systems use the same engine, so the comparison
          measures the DP layers
  pandas  SmartNoise's documented `snsql.from_df` path (its PandasReader copies the frames
          into SQLite once, before timing starts)

Every query's total privacy cost is scaled to the job's epsilon: SmartNoise spends its
`Privacy.epsilon` per mechanism (column), so the per-mechanism epsilon is divided by the
number of mechanisms that `get_privacy_cost` reports.
"""
from __future__ import annotations

import datetime as dt
import decimal
import json
import re
import sys
import time
import traceback


class _Cursor:
    """The slice of a psycopg2 cursor SmartNoise's PostgresReader uses, over DuckDB."""

    def __init__(self, conn):
        self._conn = conn
        self.description = None
        self._rows = []

    def execute(self, sql):
        relation = self._conn.execute(_duckdb_compatible(sql))
        self.description = relation.description
        self._rows = relation.fetchall() if relation.description else []

    def __iter__(self):
        return iter(self._rows)


def _duckdb_compatible(sql: str) -> str:
    """SmartNoise samples max_ids rows per key with ROW_NUMBER() OVER (... ORDER BY
    RANDOM()), which DuckDB refuses (volatile window order). Dropping the ORDER BY keeps an
    arbitrary max_ids rows per key: the same bounding, without the per-partition sort, so
    if anything this makes SmartNoise a little faster than it really is."""
    return _RANDOM_ORDER.sub(" )", sql)


_RANDOM_ORDER = re.compile(r"\s+ORDER\s+BY\s+RANDOM\s*\(\s*\)\s*\)", re.IGNORECASE)


class _Connection:
    def __init__(self, conn):
        self._conn = conn

    def cursor(self):
        return _Cursor(self._conn)

    def commit(self):
        pass

    def rollback(self):
        pass


def _load(job):
    import duckdb
    import pyarrow.parquet as pq

    conn = duckdb.connect(":memory:", config={"threads": job["threads"]})
    conn.execute(f'CREATE SCHEMA "{job["schema"]}"')
    for name, columns in job["tables"].items():
        arrow = pq.read_table(job["paths"][name], columns=list(columns))
        conn.register("__src", arrow)
        casts = ", ".join(f'CAST("{c}" AS {t}) AS "{c}"' for c, t in columns.items())
        conn.execute(f'CREATE TABLE "{job["schema"]}"."{name}" AS SELECT {casts} FROM __src')
        conn.unregister("__src")
    return conn


def _qualified(sql: str, schema: str, tables) -> str:
    """The same logical query in SmartNoise's syntax: schema-qualified tables, and
    CAST('...' AS DATE) for DATE '...' literals (its grammar has no typed literals)."""
    names = "|".join(re.escape(t) for t in tables)
    sql = re.sub(rf"\b(FROM|JOIN)\s+({names})\b", rf"\1 {schema}.\2", sql, flags=re.IGNORECASE)
    return re.sub(r"\bDATE\s+'([0-9-]+)'", r"CAST('\1' AS DATE)", sql, flags=re.IGNORECASE)


def _plain(value):
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return value


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


def _load_frames(job) -> dict:
    import pyarrow.parquet as pq

    frames = {}
    for name, columns in job["tables"].items():
        frame = pq.read_table(job["paths"][name], columns=list(columns)).to_pandas()
        for column, sql_type in columns.items():
            if sql_type == "DOUBLE":
                frame[column] = frame[column].astype(float)
            elif sql_type == "VARCHAR":
                frame[column] = frame[column].astype(str)
        frames[f'{job["schema"]}.{name}'] = frame
    return frames


class Session:
    """One loaded engine; prepares and runs one query at a time for the driver."""

    def __init__(self, job):
        import snsql

        self.job = job
        self.engine = job.get("engine", "duckdb")
        self.reader = None
        self.sql = ""
        if self.engine == "duckdb":
            conn = _Connection(_load(job))

            def open_reader(privacy, metadata):
                return snsql.from_connection(conn, privacy=privacy, metadata=metadata,
                                             engine="postgres")
        elif self.engine == "pandas":
            frames = _load_frames(job)
            # from_df copies the frames into SQLite: do that once per metadata variant, not
            # per query, so the timings are query execution only.
            readers: dict[str, object] = {}

            def open_reader(privacy, metadata):
                key = json.dumps(metadata, sort_keys=True)
                if key not in readers:
                    readers[key] = snsql.from_df(frames, privacy=privacy, metadata=metadata)
                reader = readers[key]
                reader.privacy = privacy
                reader._refresh_options()
                return reader
        else:
            raise ValueError(f"unknown engine {self.engine!r}")
        self._open_reader = open_reader

    def prepare(self, query) -> dict:
        from snsql import Privacy

        job = self.job
        self.reader = None
        metadata = json.loads(json.dumps(job["metadata"]))
        for table in metadata[job["collection"]][job["schema"]].values():
            table["censor_dims"] = bool(query["censor_dims"])
        self.sql = _qualified(query["sql"], job["schema"], job["all_tables"])
        try:
            base = Privacy(epsilon=job["epsilon"], delta=job["delta"])
            eps_cost, delta_cost = self._open_reader(base, metadata).get_privacy_cost(self.sql)
            factor = job["epsilon"] / eps_cost if eps_cost > 0 else 1.0
            privacy = Privacy(epsilon=job["epsilon"] * factor,
                              delta=job["delta"] * (factor if delta_cost > 0 else 1.0))
            self.reader = self._open_reader(privacy, metadata)
        except Exception as err:  # SmartNoise refuses by raising; record why
            return {"status": "unsupported", "reason": _reason(err)}
        return {"status": "ok", "privacy_cost": [eps_cost * factor, delta_cost], "sql": self.sql}

    def run_once(self) -> dict:
        if self.reader is None:
            return {"status": "unsupported", "reason": "not prepared"}
        start = time.perf_counter()
        try:
            result = self.reader.execute(self.sql)
        except Exception as err:  # e.g. SQL the engine cannot run: SmartNoise cannot answer
            return {"status": "unsupported", "reason": _reason(err)}
        ms = (time.perf_counter() - start) * 1000.0
        return {"status": "ok", "ms": ms,
                "rows": [[_plain(v) for v in row] for row in result[1:]]}


def serve(lines, write) -> None:
    """Line protocol: the first line is the job (data, metadata, privacy); then
    {"op": "prepare", "query": {...}} | {"op": "run"} | {"op": "quit"}, one reply each."""
    job = json.loads(next(lines))
    try:
        session = Session(job)
    except Exception as err:
        write({"available": False, "error": _reason(err), "trace": traceback.format_exc()[-2000:]})
        return
    write({"available": True, "version": _version(), "engine": session.engine})
    for line in lines:
        request = json.loads(line)
        if request["op"] == "quit":
            return
        if request["op"] == "prepare":
            write(session.prepare(request["query"]))
        elif request["op"] == "run":
            write(session.run_once())
        else:
            write({"status": "error", "reason": f"unknown op {request['op']!r}"})


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("smartnoise-sql")
    except Exception:
        return "unknown"


def main() -> int:
    def write(message) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    serve(iter(sys.stdin.readline, ""), write)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run bounded SQL on Spark SQL (pyspark; local mode or a cluster session you pass in).

`run()` takes the rewriter's DuckDB-dialect SQL and translates it (sqlgate/backends/dialects.py).
The executor works in its own `SparkSession.newSession()`: isolated SQL configuration and
temporary views, shared SparkContext. That session runs with spark.sql.ansi.enabled=false, in
which casts, division by zero and overflow yield NULL (or wrap) instead of raising, so no
error can depend on a data value (privacy rule 6); it is set and re-checked before every run.
Timeouts and cancellation cancel the run's Spark job group. Engine errors are never shown.
"""
from __future__ import annotations

import decimal
import threading
import uuid
from typing import Any, Mapping

import pandas as pd

from sqlgate.backends.dialects import translate
from sqlgate.backends.loading import dataset_rows
from sqlgate.errors import ExecutionFailed, QueryCanceled
from sqlgate.executor import RawResult
from sqlgate.metadata import DatasetMeta

_ANSI = "spark.sql.ansi.enabled"


def local_session(app_name: str = "sqlgate", cores: int = 2, warehouse: str | None = None):
    """A small local-mode SparkSession (no UI, few shuffle partitions) for tests and demos."""
    from pyspark.sql import SparkSession
    builder = (SparkSession.builder.master(f"local[{cores}]").appName(app_name)
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", str(cores))
               .config("spark.default.parallelism", str(cores))
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.host", "127.0.0.1")
               .config("spark.driver.bindAddress", "127.0.0.1")
               .config(_ANSI, "false"))
    if warehouse:
        builder = builder.config("spark.sql.warehouse.dir", warehouse)
    return builder.getOrCreate()


class SparkExecutor:
    dialect = "spark"
    input_dialect = "duckdb"
    """run() expects the rewriter's DuckDB-dialect SQL; translation is this class's job."""

    def __init__(self, spark):
        self._spark = spark.newSession()
        self._spark.conf.set(_ANSI, "false")
        self._views: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    @property
    def session(self):
        return self._spark

    def translate(self, sql: str):
        with self._lock:
            views = dict(self._views)
        return translate(sql, "spark", tables=views)

    def run(self, sql: str, *, timeout_s: float | None = None,
            cancel: threading.Event | None = None, as_frame: bool = False):
        """Rows as tuples (RawResult), or (as_frame) a pandas DataFrame, like DuckDBExecutor."""
        engine_sql = self.translate(sql)
        if self._spark.conf.get(_ANSI) != "false":
            self._spark.conf.set(_ANSI, "false")
        context = self._spark.sparkContext
        group = f"sqlgate-{uuid.uuid4().hex}"
        finished = threading.Event()
        stopped = threading.Event()
        cancel = cancel or threading.Event()

        def watch():
            import time
            deadline = None if not timeout_s else time.monotonic() + timeout_s
            while not finished.is_set():
                if cancel.is_set() or (deadline is not None and time.monotonic() > deadline):
                    stopped.set()
                    context.cancelJobGroup(group)
                    return
                finished.wait(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            if cancel.is_set():
                raise QueryCanceled("the query was cancelled")
            context.setJobGroup(group, "sqlgate bounded query", interruptOnCancel=True)
            frame = self._spark.sql(engine_sql.query)
            columns = tuple(frame.columns)
            rows = [tuple(_plain(v) for v in row) for row in frame.collect()]
            if as_frame:
                return pd.DataFrame.from_records(rows, columns=list(columns))
            return RawResult(columns, rows)
        except QueryCanceled:
            raise
        except Exception:
            if stopped.is_set():
                if cancel.is_set():
                    raise QueryCanceled("the query was cancelled") from None
                raise QueryCanceled("the query exceeded the statement timeout") from None
            raise ExecutionFailed() from None
        finally:
            finished.set()
            watcher.join(timeout=0.1)
            try:
                context.setLocalProperty("spark.jobGroup.id", None)
            except Exception:
                pass

    def load_dataset(self, meta: DatasetMeta, sources: Mapping[str, pd.DataFrame]) -> None:
        """Register each table as a temporary view of this executor's session (checked rows)."""
        from pyspark.sql import types as T
        spark_types = {"int": T.LongType(), "float": T.DoubleType(), "string": T.StringType(),
                       "bool": T.BooleanType(), "date": T.DateType()}
        rows_by_table = dataset_rows(meta, dict(sources))
        views = {}
        for name, rows in rows_by_table.items():
            table = meta.tables[name]
            schema = T.StructType([T.StructField(c.name, spark_types[c.type], True)
                                   for c in table.columns.values()])
            view = f"sqlgate_{meta.name}__{table.name}_{uuid.uuid4().hex[:8]}"
            # Materialized once in the JVM: queries then never re-read the Python rows.
            frame = self._spark.createDataFrame(rows, schema=schema).cache()
            frame.count()
            frame.createOrReplaceTempView(view)
            views[(meta.name, table.name)] = view
        with self._lock:
            old = [v for k, v in self._views.items() if k[0].lower() == meta.name.lower()]
            self._views.update(views)
        for view in old:
            if view not in views.values():
                self._spark.catalog.dropTempView(view)

    def close(self) -> None:
        """Drops this executor's views; the shared SparkContext is the caller's to stop."""
        with self._lock:
            views, self._views = list(self._views.values()), {}
        for view in views:
            try:
                self._spark.catalog.dropTempView(view)
            except Exception:
                pass


def _plain(value: Any) -> Any:
    """DECIMAL results come back as Decimal: integers stay exact, the rest become floats."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value

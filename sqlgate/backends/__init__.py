"""Executors past one machine: PostgreSQL (psycopg 3) and Spark SQL (pyspark).

Both take the rewriter's DuckDB-dialect SQL in `run()` and translate it themselves
(`translate(sql, dialect)`), because DuckDB-specific constructs (TRY, TRY_CAST, HASH, QUALIFY,
rounding) need engine-specific rewrites that a plain transpile drops or changes.

    from sqlgate.backends import PostgresExecutor, attach
    pg = PostgresExecutor("host=127.0.0.1 port=5432 dbname=data user=sqlgate")
    attach(gateway, pg, meta, {"patients": frame})   # load, register metadata, switch engine
"""
from sqlgate.backends.attach import add_external_dataset, attach, use_executor
from sqlgate.backends.dialects import EngineSQL, translate


def __getattr__(name):
    # psycopg and pyspark are optional: import them only when asked for.
    if name == "PostgresExecutor":
        from sqlgate.backends.postgres import PostgresExecutor
        return PostgresExecutor
    if name == "SparkExecutor":
        from sqlgate.backends.spark import SparkExecutor
        return SparkExecutor
    raise AttributeError(name)


__all__ = ["EngineSQL", "PostgresExecutor", "SparkExecutor", "add_external_dataset", "attach",
           "translate", "use_executor"]

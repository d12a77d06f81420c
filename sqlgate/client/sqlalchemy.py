"""A SQLAlchemy dialect over the DB-API module: `sqlgate+http://` and `sqlgate+https://`.

    engine = create_engine("sqlgate+http://ann:secret@127.0.0.1:8765/hospital")
    engine = create_engine("sqlgate+https://gateway.example/hospital?token=sqg_...&epsilon=0.5")
    pandas.read_sql("SELECT region, COUNT(*) AS n FROM patients GROUP BY region", engine)

SQL is compiled with PostgreSQL's compiler (the dialect the server reads). Reflection
(schemas = datasets, tables, columns) comes from the public metadata of /v1/datasets.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import types as sqltypes
from sqlalchemy.dialects.postgresql.base import (PGCompiler, PGIdentifierPreparer,
                                                 PGTypeCompiler)
from sqlalchemy.engine import default

_TYPES = {"int": sqltypes.BigInteger, "float": sqltypes.Float, "string": sqltypes.String,
          "bool": sqltypes.Boolean, "date": sqltypes.Date}


class SqlgateDialect(default.DefaultDialect):
    name = "sqlgate"
    driver = "http"
    scheme = "http"
    statement_compiler = PGCompiler
    preparer = PGIdentifierPreparer
    type_compiler_cls = PGTypeCompiler
    default_paramstyle = "pyformat"
    supports_statement_cache = True
    supports_native_boolean = True
    supports_sequences = False
    supports_alter = False
    supports_default_values = False
    supports_empty_insert = False
    postfetch_lastrowid = False

    @classmethod
    def import_dbapi(cls):
        from sqlgate.client import dbapi
        return dbapi

    def create_connect_args(self, url) -> tuple[list, dict[str, Any]]:
        if not url.host:
            raise ValueError("the URL needs a host, e.g. sqlgate+http://user:pw@host:8765/")
        port = f":{url.port}" if url.port else ""
        kwargs: dict[str, Any] = {"url": f"{self.scheme}://{url.host}{port}"}
        query = dict(url.query)
        if "token" in query:
            kwargs["token"] = query.pop("token")
        elif url.username:
            kwargs["user"] = url.username
            kwargs["password"] = url.password or ""
        if "epsilon" in query:
            kwargs["epsilon"] = float(query.pop("epsilon"))
        if "timeout_s" in query:
            kwargs["timeout_s"] = float(query.pop("timeout_s"))
        if query:
            raise ValueError(f"unknown URL parameters: {', '.join(sorted(query))}")
        self._default_schema = url.database or None
        return [], kwargs

    # ------------------------------------------------------------ session behaviour

    def _get_server_version_info(self, connection):
        return (0, 1)

    def _get_default_schema_name(self, connection):
        return getattr(self, "_default_schema", None)

    def get_isolation_level(self, dbapi_connection):
        return "AUTOCOMMIT"

    def set_isolation_level(self, dbapi_connection, level):
        pass

    def get_default_isolation_level(self, dbapi_conn):
        return "AUTOCOMMIT"

    def do_rollback(self, dbapi_connection):
        pass

    def do_commit(self, dbapi_connection):
        pass

    def do_ping(self, dbapi_connection) -> bool:
        dbapi_connection.datasets()
        return True

    # ------------------------------------------------------------ reflection

    def get_schema_names(self, connection, **kw) -> list[str]:
        return sorted(d["name"] for d in self._raw(connection).datasets())

    def get_table_names(self, connection, schema=None, **kw) -> list[str]:
        datasets = self._raw(connection).datasets()
        if schema is None:
            names = [t for d in datasets for t in d["tables"]]
            return sorted(n for n in set(names) if names.count(n) == 1)
        return sorted(t for d in datasets if d["name"].lower() == schema.lower()
                      for t in d["tables"])

    def get_view_names(self, connection, schema=None, **kw) -> list[str]:
        return []

    def has_table(self, connection, table_name, schema=None, **kw) -> bool:
        return table_name.lower() in {t.lower() for t in
                                      self.get_table_names(connection, schema)}

    def get_columns(self, connection, table_name, schema=None, **kw) -> list[dict]:
        from sqlalchemy.exc import NoSuchTableError
        raw = self._raw(connection)
        for dataset in raw.datasets():
            if schema is not None and dataset["name"].lower() != schema.lower():
                continue
            if table_name.lower() not in [t.lower() for t in dataset["tables"]]:
                continue
            meta = raw.dataset(dataset["name"])
            for name, table in meta["tables"].items():
                if name.lower() == table_name.lower():
                    return [{"name": column, "type": _TYPES.get(spec["type"],
                                                                sqltypes.String)(),
                             "nullable": spec.get("nullable", True)
                             and column != table.get("privacy_unit"),
                             "default": None, "comment": _comment(table, column, spec)}
                            for column, spec in table["columns"].items()]
        raise NoSuchTableError(table_name)

    def get_pk_constraint(self, connection, table_name, schema=None, **kw) -> dict:
        return {"name": None, "constrained_columns": []}

    def get_foreign_keys(self, connection, table_name, schema=None, **kw) -> list:
        return []

    def get_indexes(self, connection, table_name, schema=None, **kw) -> list:
        return []

    @staticmethod
    def _raw(connection):
        return connection.connection.dbapi_connection


class SqlgateHttpsDialect(SqlgateDialect):
    driver = "https"
    scheme = "https"


def _comment(table: dict, column: str, spec: dict) -> str | None:
    if column == table.get("privacy_unit"):
        return "privacy unit: never released, cannot be grouped by"
    facts = []
    if "lower" in spec and "upper" in spec:
        facts.append(f"bounds [{spec['lower']}, {spec['upper']}]")
    if spec.get("public_keys") is not None:
        facts.append(f"{len(spec['public_keys'])} public keys")
    return "; ".join(facts) or None

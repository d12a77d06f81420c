"""The Trino catalog views (information_schema, system.jdbc, system.metadata) built from
PUBLIC METADATA ONLY, and a throwaway sandboxed DuckDB to answer queries over them.

BI tools browse schemas with SQL over these tables (with WHERE, LIKE ... ESCAPE, ORDER BY),
so rather than pattern-matching their queries we load the views a query names into a fresh
in-memory DuckDB (external access off, configuration locked) and run the query there. The
database holds dataset, table and column names, types and declared bounds of the datasets
the caller may query: never a row of private data, never a statistic.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import duckdb

from sqlgate.executor import SANDBOX_CONFIG
from sqlgate.metadata import DatasetMeta

from server.trino.errors import (EXCEEDED_TIME_LIMIT, GENERIC_INSUFFICIENT_RESOURCES,
                                 GENERIC_USER_ERROR, TrinoError)
from server.trino.session import CATALOG, SYSTEM_CATALOG
from server.trino.types import JDBC_TYPES, VARCHAR_MAX, trino_type_for_sqlgate

SQLGATE_VERSION = "476-sqlgate"
# The sandbox holds a few thousand metadata rows: a small, single-threaded engine is plenty,
# and it keeps a hostile constant query (huge UNNEST, ...) from hurting the server.
SANDBOX_LIMITS = {"threads": 1, "memory_limit": "256MB", "max_temp_directory_size": "0KB"}
MAX_METADATA_ROWS = 100_000
METADATA_TIMEOUT_S = 10.0

V, B, I, BOOL = "VARCHAR", "BIGINT", "INTEGER", "BOOLEAN"

# (schema, table) -> columns (name, DuckDB type). Shapes follow Trino's own tables so the
# queries JDBC, the SQLAlchemy dialect and BI tools send find the columns they expect.
TABLES: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("information_schema", "schemata"): (("catalog_name", V), ("schema_name", V)),
    ("information_schema", "tables"): (("table_catalog", V), ("table_schema", V),
                                       ("table_name", V), ("table_type", V)),
    ("information_schema", "columns"): (
        ("table_catalog", V), ("table_schema", V), ("table_name", V), ("column_name", V),
        ("ordinal_position", B), ("column_default", V), ("is_nullable", V), ("data_type", V),
        ("comment", V), ("extra_info", V)),
    ("information_schema", "views"): (("table_catalog", V), ("table_schema", V),
                                      ("table_name", V), ("view_owner", V),
                                      ("view_definition", V)),
    ("information_schema", "table_privileges"): (
        ("grantor", V), ("grantor_type", V), ("grantee", V), ("grantee_type", V),
        ("table_catalog", V), ("table_schema", V), ("table_name", V), ("privilege_type", V),
        ("is_grantable", V), ("with_hierarchy", V)),
    ("information_schema", "enabled_roles"): (("role_name", V),),
    ("information_schema", "applicable_roles"): (("grantee", V), ("grantee_type", V),
                                                 ("role_name", V), ("is_grantable", V)),
    ("information_schema", "roles"): (("role_name", V),),
    ("jdbc", "catalogs"): (("table_cat", V),),
    ("jdbc", "schemas"): (("table_schem", V), ("table_catalog", V)),
    ("jdbc", "table_types"): (("table_type", V),),
    ("jdbc", "tables"): (
        ("table_cat", V), ("table_schem", V), ("table_name", V), ("table_type", V),
        ("remarks", V), ("type_cat", V), ("type_schem", V), ("type_name", V),
        ("self_referencing_col_name", V), ("ref_generation", V)),
    ("jdbc", "columns"): (
        ("table_cat", V), ("table_schem", V), ("table_name", V), ("column_name", V),
        ("data_type", B), ("type_name", V), ("column_size", B), ("buffer_length", B),
        ("decimal_digits", B), ("num_prec_radix", B), ("nullable", B), ("remarks", V),
        ("column_def", V), ("sql_data_type", B), ("sql_datetime_sub", B),
        ("char_octet_length", B), ("ordinal_position", B), ("is_nullable", V),
        ("scope_catalog", V), ("scope_schema", V), ("scope_table", V),
        ("source_data_type", B), ("is_autoincrement", V), ("is_generatedcolumn", V)),
    ("jdbc", "types"): (
        ("type_name", V), ("data_type", B), ("precision", B), ("literal_prefix", V),
        ("literal_suffix", V), ("create_params", V), ("nullable", B), ("case_sensitive", BOOL),
        ("searchable", B), ("unsigned_attribute", BOOL), ("fixed_prec_scale", BOOL),
        ("auto_increment", BOOL), ("local_type_name", V), ("minimum_scale", B),
        ("maximum_scale", B), ("sql_data_type", B), ("sql_datetime_sub", B),
        ("num_prec_radix", B)),
    ("jdbc", "udts"): (("type_cat", V), ("type_schem", V), ("type_name", V), ("class_name", V),
                       ("data_type", B), ("remarks", V), ("base_type", B)),
    ("jdbc", "super_types"): (("type_cat", V), ("type_schem", V), ("type_name", V),
                              ("supertype_cat", V), ("supertype_schem", V),
                              ("supertype_name", V)),
    ("jdbc", "super_tables"): (("table_cat", V), ("table_schem", V), ("table_name", V),
                               ("supertable_name", V)),
    ("jdbc", "attributes"): (("type_cat", V), ("type_schem", V), ("type_name", V),
                             ("attr_name", V), ("data_type", B), ("attr_type_name", V),
                             ("attr_size", B), ("decimal_digits", B), ("num_prec_radix", B),
                             ("nullable", B), ("remarks", V), ("attr_def", V),
                             ("sql_data_type", B), ("sql_datetime_sub", B),
                             ("char_octet_length", B), ("ordinal_position", B),
                             ("is_nullable", V), ("scope_catalog", V), ("scope_schema", V),
                             ("scope_table", V), ("source_data_type", B)),
    ("jdbc", "procedures"): (("procedure_cat", V), ("procedure_schem", V),
                             ("procedure_name", V), ("remarks", V), ("procedure_type", B),
                             ("specific_name", V)),
    ("jdbc", "procedure_columns"): (("procedure_cat", V), ("procedure_schem", V),
                                    ("procedure_name", V), ("column_name", V),
                                    ("column_type", B), ("data_type", B), ("type_name", V),
                                    ("precision", B), ("length", B), ("scale", B),
                                    ("radix", B), ("nullable", B), ("remarks", V),
                                    ("column_def", V), ("sql_data_type", B),
                                    ("sql_datetime_sub", B), ("char_octet_length", B),
                                    ("ordinal_position", B), ("is_nullable", V),
                                    ("specific_name", V)),
    ("jdbc", "pseudo_columns"): (("table_cat", V), ("table_schem", V), ("table_name", V),
                                 ("column_name", V), ("data_type", B), ("column_size", B),
                                 ("decimal_digits", B), ("num_prec_radix", B),
                                 ("column_usage", V), ("remarks", V),
                                 ("char_octet_length", B), ("is_nullable", V)),
    ("metadata", "catalogs"): (("catalog_name", V), ("connector_id", V), ("connector_name", V)),
    ("metadata", "schema_properties"): (("catalog_name", V), ("property_name", V),
                                        ("default_value", V), ("type", V), ("description", V)),
    ("metadata", "table_properties"): (("catalog_name", V), ("property_name", V),
                                       ("default_value", V), ("type", V), ("description", V)),
    ("metadata", "column_properties"): (("catalog_name", V), ("property_name", V),
                                        ("default_value", V), ("type", V), ("description", V)),
    ("metadata", "table_comments"): (("catalog_name", V), ("schema_name", V),
                                     ("table_name", V), ("comment", V)),
    ("runtime", "nodes"): (("node_id", V), ("http_uri", V), ("node_version", V),
                           ("coordinator", BOOL), ("state", V)),
}

SYSTEM_SCHEMAS = ("information_schema", "jdbc", "metadata", "runtime")


def local_name(schema: str, table: str) -> str:
    """The sandbox table that holds view (schema, table)."""
    return f"trino__{schema}__{table}"


@dataclass(frozen=True)
class CatalogView:
    """What one caller may see: the datasets it may query, and who it is."""

    datasets: tuple[DatasetMeta, ...]
    user: str
    base_uri: str = "http://127.0.0.1"

    def schemas(self) -> list[str]:
        return sorted([d.name for d in self.datasets] + ["information_schema"])

    def has_table(self, schema: str, table: str) -> bool:
        if schema.lower() == "information_schema":
            return ("information_schema", table.lower()) in TABLES
        return any(d.name.lower() == schema.lower() and d.table(table) is not None
                   for d in self.datasets)

    # ------------------------------------------------------------ rows per view

    def rows(self, schema: str, table: str, catalog: str = CATALOG) -> list[tuple]:
        builder: Callable[[], Iterable[tuple]] = getattr(
            self, f"_{schema}_{table}", lambda: ())
        if schema == "information_schema" and catalog == SYSTEM_CATALOG:
            return list(self._system_information_schema(table))
        return list(builder())

    def _columns(self) -> Iterable[tuple]:
        """(schema, table, column name, position, trino type, nullable, comment)."""
        for dataset in sorted(self.datasets, key=lambda d: d.name):
            for table in sorted(dataset.tables.values(), key=lambda t: t.name):
                for position, col in enumerate(table.columns.values(), start=1):
                    nullable = col.nullable and col.name != table.privacy_unit
                    yield (dataset.name, table.name, col.name, position,
                           trino_type_for_sqlgate(col.type), nullable,
                           _column_comment(table, col))
        for (schema, table), columns in TABLES.items():
            if schema == "information_schema":
                for position, (name, kind) in enumerate(columns, start=1):
                    yield (schema, table, name, position, _trino_of_duckdb(kind), True, None)

    def _tables(self) -> Iterable[tuple[str, str, str | None]]:
        for dataset in sorted(self.datasets, key=lambda d: d.name):
            for table in sorted(dataset.tables):
                yield dataset.name, dataset.tables[table].name, dataset.description or None
        for schema, table in TABLES:
            if schema == "information_schema":
                yield schema, table, None

    def _information_schema_schemata(self):
        return [(CATALOG, s) for s in self.schemas()]

    def _information_schema_tables(self):
        return [(CATALOG, s, t, "BASE TABLE") for s, t, _ in self._tables()]

    def _information_schema_columns(self):
        return [(CATALOG, s, t, c, p, None, "YES" if n else "NO", ty, comment, "")
                for s, t, c, p, ty, n, comment in self._columns()]

    def _information_schema_table_privileges(self):
        return [("sqlgate", "USER", self.user, "USER", CATALOG, s, t, "SELECT", "NO", None)
                for s, t, _ in self._tables() if s != "information_schema"]

    def _system_information_schema(self, table: str):
        if table == "schemata":
            return [(SYSTEM_CATALOG, s) for s in SYSTEM_SCHEMAS]
        if table == "tables":
            return [(SYSTEM_CATALOG, s, t, "BASE TABLE") for s, t in TABLES
                    if s != "information_schema"]
        if table == "columns":
            return [(SYSTEM_CATALOG, s, t, name, p, None, "YES", _trino_of_duckdb(kind), None, "")
                    for (s, t), cols in TABLES.items() if s != "information_schema"
                    for p, (name, kind) in enumerate(cols, start=1)]
        return []

    def _jdbc_catalogs(self):
        return [(CATALOG,), (SYSTEM_CATALOG,)]

    def _jdbc_schemas(self):
        return [(s, CATALOG) for s in self.schemas()] + \
               [(s, SYSTEM_CATALOG) for s in SYSTEM_SCHEMAS]

    def _jdbc_table_types(self):
        return [("TABLE",), ("VIEW",)]

    def _jdbc_tables(self):
        return [(CATALOG, s, t, "TABLE", remarks, None, None, None, None, None)
                for s, t, remarks in self._tables()]

    def _jdbc_columns(self):
        rows = []
        for s, t, c, p, ty, n, comment in self._columns():
            size = VARCHAR_MAX if ty == "varchar" else {"bigint": 19, "double": 53, "date": 10,
                                                        "boolean": 1}.get(ty)
            rows.append((CATALOG, s, t, c, JDBC_TYPES.get(ty, 1111), ty, size, None,
                         None if ty not in ("bigint", "double") else 0,
                         10 if ty == "bigint" else 2 if ty == "double" else None,
                         1 if n else 0, comment, None, None, None,
                         VARCHAR_MAX if ty == "varchar" else None, p, "YES" if n else "NO",
                         None, None, None, None, "NO", "NO"))
        return rows

    def _jdbc_types(self):
        def row(name, precision, prefix=None, suffix=None, radix=None):
            return (name, JDBC_TYPES[name], precision, prefix, suffix, None, 1,
                    name == "varchar", 3, False, False, False, None, 0, 0, None, None, radix)
        return [row("boolean", None), row("bigint", 19, radix=10), row("integer", 10, radix=10),
                row("double", 53, radix=2), row("varchar", VARCHAR_MAX, "'", "'"),
                row("date", 10, "DATE '", "'")]

    def _metadata_catalogs(self):
        return [(CATALOG, CATALOG, "sqlgate"), (SYSTEM_CATALOG, SYSTEM_CATALOG, "system")]

    def _metadata_table_comments(self):
        return [(CATALOG, s, t, remarks) for s, t, remarks in self._tables()]

    def _runtime_nodes(self):
        return [("sqlgate", self.base_uri, SQLGATE_VERSION, True, "active")]


def _column_comment(table, col) -> str | None:
    """Public, declared facts about a column that tell an analyst what it can be used for."""
    if col.name == table.privacy_unit:
        return "privacy unit: never released, cannot be grouped by"
    facts = []
    if col.has_bounds:
        facts.append(f"bounds [{_number(col.lower)}, {_number(col.upper)}]")
    if col.public_keys is not None:
        facts.append(f"{len(col.public_keys)} public keys")
    return "; ".join(facts) or None


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _trino_of_duckdb(kind: str) -> str:
    return {"VARCHAR": "varchar", "BIGINT": "bigint", "INTEGER": "integer",
            "BOOLEAN": "boolean"}[kind]


@dataclass(frozen=True)
class TableResult:
    columns: tuple[tuple[str, str], ...]   # (name, DuckDB type)
    rows: list[tuple]


def run_in_sandbox(sql: str, views: Sequence[tuple[str, str, str]], catalog: CatalogView,
                   *, timeout_s: float = METADATA_TIMEOUT_S) -> TableResult:
    """Run `sql` (DuckDB dialect) over the named views [(catalog, schema, table)], each
    loaded into a fresh sandboxed in-memory DuckDB as `local_name(schema, table)`."""
    conn = duckdb.connect(":memory:", config={**SANDBOX_LIMITS, **SANDBOX_CONFIG})
    timer = threading.Timer(timeout_s, conn.interrupt)
    try:
        for view_catalog, schema, table in views:
            columns = TABLES[(schema, table)]
            name = local_name(schema, table) + ("__system" if view_catalog == SYSTEM_CATALOG
                                                and schema == "information_schema" else "")
            conn.execute(f'CREATE TABLE "{name}" ('
                         + ", ".join(f'"{c}" {t}' for c, t in columns) + ")")
            rows = catalog.rows(schema, table, view_catalog)
            if rows:
                _bulk_insert(conn, name, [c for c, _ in columns], rows)
        timer.start()
        try:
            cursor = conn.execute(sql)
            description = cursor.description or []
            rows = cursor.fetchmany(MAX_METADATA_ROWS + 1)
        except duckdb.InterruptException:
            raise TrinoError(EXCEEDED_TIME_LIMIT, "the catalog query ran too long") from None
        except duckdb.Error as err:
            # Only public metadata is in this database, so the engine's message is safe to
            # show, and it is what tells a user what is wrong with a catalog query.
            raise TrinoError(GENERIC_USER_ERROR,
                             f"catalog query failed: {str(err).splitlines()[0]}") from None
        if len(rows) > MAX_METADATA_ROWS:
            raise TrinoError(GENERIC_INSUFFICIENT_RESOURCES,
                             f"catalog queries return at most {MAX_METADATA_ROWS} rows")
        return TableResult(tuple((d[0], str(d[1])) for d in description), rows)
    finally:
        timer.cancel()
        conn.close()


def _bulk_insert(conn, table: str, names: list[str], rows: list[tuple]) -> None:
    """Load rows through a registered DataFrame: DuckDB's executemany runs one statement per
    row (milliseconds each), so a domain with thousands of columns made every catalog query
    of a BI tool take many seconds before it even started."""
    import pandas as pd

    frame = pd.DataFrame.from_records(rows, columns=[f"c{i}" for i in range(len(names))])
    conn.register("_sg_rows", frame)
    try:
        conn.execute(f'INSERT INTO "{table}" SELECT '
                     + ", ".join(f"c{i}" for i in range(len(names))) + " FROM _sg_rows")
    finally:
        conn.unregister("_sg_rows")

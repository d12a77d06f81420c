"""A synthetic pg_catalog / information_schema for one connection.

Clients (psql \\d, SQLAlchemy's inspector, pgJDBC DatabaseMetaData, DBeaver, Metabase...)
introspect with queries over pg_catalog. We answer them from a throwaway in-memory DuckDB,
sandboxed like the engine, that holds ONLY public metadata of the datasets this user may
query: schema, table and column names and types. No data, no row counts (reltuples = -1),
no statistics. Queries are parsed as PostgreSQL with sqlglot, catalog relations are pointed
at our own `pgc` / `pgis` schemas (DuckDB's built-in pg_catalog is never reachable), pg
functions become `sg_*` macros, and the result is run on that engine.
"""
from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass

import duckdb
from sqlglot import exp

from server.pgwire import types as T
from sqlgate.errors import LimitExceeded, PolicyRefused, QueryCanceled
from sqlgate.executor import SANDBOX_CONFIG

log = logging.getLogger("sqlgate.pgwire.catalog")

SERVER_VERSION = "16.4"
SERVER_VERSION_NUM = "160004"
VERSION_STRING = (f"PostgreSQL {SERVER_VERSION} (sqlgate differential privacy gateway) "
                  f"on x86_64-pc-linux-gnu, 64-bit")

NS_PG_CATALOG = 11
NS_PUBLIC = 2200
NS_INFORMATION_SCHEMA = 13000
FIRST_DATASET_OID = 16384
USER_OID = 10
DATABASE_OID = 16383

# The catalog holds a few thousand metadata rows, but the SQL sent to it is the client's: a
# constant query (generate_series over 10^12, repeat('x', 10^9), a huge cross join) must not
# exhaust the server's memory or hold a thread forever. Same limits as the Trino sandbox.
CATALOG_LIMITS = {"threads": 1, "memory_limit": "256MB", "max_temp_directory_size": "0KB"}
MAX_CATALOG_ROWS = 100_000
CATALOG_TIMEOUT_S = 10.0

# Well-known relation OIDs clients use through 'pg_class'::regclass and friends.
WELL_KNOWN_RELATIONS = {"pg_class": 1259, "pg_type": 1247, "pg_attribute": 1249,
                        "pg_proc": 1255, "pg_namespace": 2615, "pg_constraint": 2606,
                        "pg_database": 1262, "pg_index": 2610, "pg_description": 2609}

_CATALOG_DDL = """
CREATE SCHEMA pgc;
CREATE SCHEMA pgis;
CREATE TABLE pgc.pg_namespace (oid UINTEGER, nspname VARCHAR, nspowner UINTEGER, nspacl VARCHAR[]);
CREATE TABLE pgc.pg_class (oid UINTEGER, relname VARCHAR, relnamespace UINTEGER, reltype UINTEGER,
  reloftype UINTEGER, relowner UINTEGER, relam UINTEGER, relfilenode UINTEGER,
  reltablespace UINTEGER, relpages INTEGER, reltuples FLOAT, relallvisible INTEGER,
  reltoastrelid UINTEGER, relhasindex BOOLEAN, relisshared BOOLEAN, relpersistence VARCHAR,
  relkind VARCHAR, relnatts SMALLINT, relchecks SMALLINT, relhasoids BOOLEAN, relhaspkey BOOLEAN,
  relhasrules BOOLEAN, relhastriggers BOOLEAN, relhassubclass BOOLEAN, relrowsecurity BOOLEAN,
  relforcerowsecurity BOOLEAN, relispopulated BOOLEAN, relreplident VARCHAR,
  relispartition BOOLEAN, relrewrite UINTEGER, relfrozenxid UINTEGER, relminmxid UINTEGER,
  relacl VARCHAR[], reloptions VARCHAR[], relpartbound VARCHAR);
CREATE TABLE pgc.pg_attribute (attrelid UINTEGER, attname VARCHAR, atttypid UINTEGER,
  attstattarget INTEGER, attlen SMALLINT, attnum SMALLINT, attndims INTEGER, attcacheoff INTEGER,
  atttypmod INTEGER, attbyval BOOLEAN, attstorage VARCHAR, attalign VARCHAR, attnotnull BOOLEAN,
  atthasdef BOOLEAN, atthasmissing BOOLEAN, attidentity VARCHAR, attgenerated VARCHAR,
  attisdropped BOOLEAN, attislocal BOOLEAN, attinhcount INTEGER, attcollation UINTEGER,
  attacl VARCHAR[], attoptions VARCHAR[], attfdwoptions VARCHAR[], attmissingval VARCHAR,
  attcompression VARCHAR);
CREATE TABLE pgc.pg_type (oid UINTEGER, typname VARCHAR, typnamespace UINTEGER, typowner UINTEGER,
  typlen SMALLINT, typbyval BOOLEAN, typtype VARCHAR, typcategory VARCHAR, typispreferred BOOLEAN,
  typisdefined BOOLEAN, typdelim VARCHAR, typrelid UINTEGER, typsubscript VARCHAR,
  typelem UINTEGER, typarray UINTEGER, typinput VARCHAR, typoutput VARCHAR, typreceive VARCHAR,
  typsend VARCHAR, typmodin VARCHAR, typmodout VARCHAR, typanalyze VARCHAR, typalign VARCHAR,
  typstorage VARCHAR, typnotnull BOOLEAN, typbasetype UINTEGER, typtypmod INTEGER,
  typndims INTEGER, typcollation UINTEGER, typdefaultbin VARCHAR, typdefault VARCHAR,
  typacl VARCHAR[]);
CREATE TABLE pgc.pg_database (oid UINTEGER, datname VARCHAR, datdba UINTEGER, encoding INTEGER,
  datlocprovider VARCHAR, datistemplate BOOLEAN, datallowconn BOOLEAN, datconnlimit INTEGER,
  datfrozenxid UINTEGER, datminmxid UINTEGER, dattablespace UINTEGER, datcollate VARCHAR,
  datctype VARCHAR, daticulocale VARCHAR, datcollversion VARCHAR, datacl VARCHAR[]);
CREATE TABLE pgc.pg_roles (oid UINTEGER, rolname VARCHAR, rolsuper BOOLEAN, rolinherit BOOLEAN,
  rolcreaterole BOOLEAN, rolcreatedb BOOLEAN, rolcanlogin BOOLEAN, rolreplication BOOLEAN,
  rolconnlimit INTEGER, rolpassword VARCHAR, rolvaliduntil TIMESTAMP, rolbypassrls BOOLEAN,
  rolconfig VARCHAR[]);
CREATE TABLE pgc.pg_settings (name VARCHAR, setting VARCHAR, unit VARCHAR, category VARCHAR,
  short_desc VARCHAR, extra_desc VARCHAR, context VARCHAR, vartype VARCHAR, source VARCHAR,
  min_val VARCHAR, max_val VARCHAR, enumvals VARCHAR[], boot_val VARCHAR, reset_val VARCHAR,
  sourcefile VARCHAR, sourceline INTEGER, pending_restart BOOLEAN);
CREATE TABLE pgc.pg_index (indexrelid UINTEGER, indrelid UINTEGER, indnatts SMALLINT,
  indnkeyatts SMALLINT, indisunique BOOLEAN, indnullsnotdistinct BOOLEAN, indisprimary BOOLEAN,
  indisexclusion BOOLEAN, indimmediate BOOLEAN, indisclustered BOOLEAN, indisvalid BOOLEAN,
  indcheckxmin BOOLEAN, indisready BOOLEAN, indislive BOOLEAN, indisreplident BOOLEAN,
  indkey SMALLINT[], indcollation UINTEGER[], indclass UINTEGER[], indoption SMALLINT[],
  indexprs VARCHAR, indpred VARCHAR);
CREATE TABLE pgc.pg_description (objoid UINTEGER, classoid UINTEGER, objsubid INTEGER, description VARCHAR);
CREATE TABLE pgc.pg_shdescription (objoid UINTEGER, classoid UINTEGER, description VARCHAR);
CREATE TABLE pgc.pg_attrdef (oid UINTEGER, adrelid UINTEGER, adnum SMALLINT, adbin VARCHAR);
CREATE TABLE pgc.pg_constraint (oid UINTEGER, conname VARCHAR, connamespace UINTEGER,
  contype VARCHAR, condeferrable BOOLEAN, condeferred BOOLEAN, convalidated BOOLEAN,
  conrelid UINTEGER, contypid UINTEGER, conindid UINTEGER, conparentid UINTEGER,
  confrelid UINTEGER, confupdtype VARCHAR, confdeltype VARCHAR, confmatchtype VARCHAR,
  conislocal BOOLEAN, coninhcount INTEGER, connoinherit BOOLEAN, conkey SMALLINT[],
  confkey SMALLINT[], conbin VARCHAR);
CREATE TABLE pgc.pg_proc (oid UINTEGER, proname VARCHAR, pronamespace UINTEGER, proowner UINTEGER,
  prolang UINTEGER, prokind VARCHAR, proretset BOOLEAN, pronargs SMALLINT, prorettype UINTEGER,
  proargtypes VARCHAR, proargnames VARCHAR[], prosrc VARCHAR);
CREATE TABLE pgc.pg_am (oid UINTEGER, amname VARCHAR, amhandler VARCHAR, amtype VARCHAR);
CREATE TABLE pgc.pg_collation (oid UINTEGER, collname VARCHAR, collnamespace UINTEGER,
  collprovider VARCHAR, collencoding INTEGER, collcollate VARCHAR, collctype VARCHAR);
CREATE TABLE pgc.pg_inherits (inhrelid UINTEGER, inhparent UINTEGER, inhseqno INTEGER, inhdetachpending BOOLEAN);
CREATE TABLE pgc.pg_tablespace (oid UINTEGER, spcname VARCHAR, spcowner UINTEGER);
CREATE TABLE pgc.pg_extension (oid UINTEGER, extname VARCHAR, extowner UINTEGER,
  extnamespace UINTEGER, extrelocatable BOOLEAN, extversion VARCHAR);
CREATE TABLE pgc.pg_enum (oid UINTEGER, enumtypid UINTEGER, enumsortorder FLOAT, enumlabel VARCHAR);
CREATE TABLE pgc.pg_range (rngtypid UINTEGER, rngsubtype UINTEGER, rngmultitypid UINTEGER);
CREATE TABLE pgc.pg_trigger (oid UINTEGER, tgrelid UINTEGER, tgname VARCHAR, tgenabled VARCHAR, tgisinternal BOOLEAN);
CREATE TABLE pgc.pg_auth_members (oid UINTEGER, roleid UINTEGER, member UINTEGER, grantor UINTEGER,
  admin_option BOOLEAN, inherit_option BOOLEAN, set_option BOOLEAN);
CREATE TABLE pgc.pg_rewrite (oid UINTEGER, rulename VARCHAR, ev_class UINTEGER);
CREATE TABLE pgc.pg_policy (oid UINTEGER, polname VARCHAR, polrelid UINTEGER, polcmd VARCHAR,
  polpermissive BOOLEAN, polroles UINTEGER[], polqual VARCHAR, polwithcheck VARCHAR);
CREATE TABLE pgc.pg_statistic_ext (oid UINTEGER, stxrelid UINTEGER, stxname VARCHAR,
  stxnamespace UINTEGER, stxkind VARCHAR[], stxkeys SMALLINT[], stxstattarget INTEGER);
CREATE TABLE pgc.pg_publication (oid UINTEGER, pubname VARCHAR, puballtables BOOLEAN);
CREATE TABLE pgc.pg_publication_rel (oid UINTEGER, prpubid UINTEGER, prrelid UINTEGER,
  prqual VARCHAR, prattrs SMALLINT[]);
CREATE TABLE pgc.pg_publication_namespace (oid UINTEGER, pnpubid UINTEGER, pnnspid UINTEGER);
CREATE TABLE pgc.pg_foreign_table (ftrelid UINTEGER, ftserver UINTEGER, ftoptions VARCHAR[]);
CREATE TABLE pgc.pg_partitioned_table (partrelid UINTEGER, partstrat VARCHAR);
CREATE TABLE pgc.pg_depend (classid UINTEGER, objid UINTEGER, objsubid INTEGER, refclassid UINTEGER,
  refobjid UINTEGER, refobjsubid INTEGER, deptype VARCHAR);
CREATE TABLE pgc.pg_sequence (seqrelid UINTEGER, seqtypid UINTEGER, seqstart BIGINT,
  seqincrement BIGINT, seqmax BIGINT, seqmin BIGINT, seqcache BIGINT, seqcycle BOOLEAN);
CREATE TABLE pgc.pg_event_trigger (oid UINTEGER, evtname VARCHAR);
CREATE TABLE pgc.pg_language (oid UINTEGER, lanname VARCHAR);
CREATE TABLE pgc.pg_matviews (schemaname VARCHAR, matviewname VARCHAR, definition VARCHAR);
CREATE TABLE pgc.pg_stat_activity (datid UINTEGER, datname VARCHAR, pid INTEGER, usename VARCHAR,
  application_name VARCHAR, state VARCHAR, query VARCHAR);
CREATE VIEW pgc.pg_user AS SELECT rolname AS usename, oid AS usesysid, rolcreatedb AS usecreatedb,
  rolsuper AS usesuper, false AS userepl, false AS usebypassrls, '********' AS passwd,
  rolvaliduntil AS valuntil, rolconfig AS useconfig FROM pgc.pg_roles;
CREATE VIEW pgc.pg_tables AS SELECT n.nspname AS schemaname, c.relname AS tablename,
  'sqlgate' AS tableowner, NULL::VARCHAR AS tablespace, false AS hasindexes, false AS hasrules,
  false AS hastriggers, false AS rowsecurity FROM pgc.pg_class c JOIN pgc.pg_namespace n
  ON n.oid = c.relnamespace WHERE c.relkind = 'r';
CREATE VIEW pgc.pg_views AS SELECT NULL::VARCHAR AS schemaname, NULL::VARCHAR AS viewname,
  NULL::VARCHAR AS viewowner, NULL::VARCHAR AS definition WHERE false;
CREATE VIEW pgc.pg_indexes AS SELECT NULL::VARCHAR AS schemaname, NULL::VARCHAR AS tablename,
  NULL::VARCHAR AS indexname, NULL::VARCHAR AS tablespace, NULL::VARCHAR AS indexdef WHERE false;
CREATE VIEW pgc.pg_matviews_v AS SELECT * FROM pgc.pg_matviews;
CREATE VIEW pgis.schemata AS SELECT 'sqlgate' AS catalog_name, nspname AS schema_name,
  'sqlgate' AS schema_owner, NULL::VARCHAR AS default_character_set_catalog,
  NULL::VARCHAR AS default_character_set_schema, NULL::VARCHAR AS default_character_set_name,
  NULL::VARCHAR AS sql_path FROM pgc.pg_namespace;
CREATE VIEW pgis.tables AS SELECT 'sqlgate' AS table_catalog, n.nspname AS table_schema,
  c.relname AS table_name, 'BASE TABLE' AS table_type,
  NULL::VARCHAR AS self_referencing_column_name, NULL::VARCHAR AS reference_generation,
  NULL::VARCHAR AS user_defined_type_catalog, NULL::VARCHAR AS user_defined_type_schema,
  NULL::VARCHAR AS user_defined_type_name, 'NO' AS is_insertable_into, 'NO' AS is_typed,
  NULL::VARCHAR AS commit_action FROM pgc.pg_class c JOIN pgc.pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind = 'r';
CREATE TABLE pgis.columns_base (table_schema VARCHAR, table_name VARCHAR, column_name VARCHAR,
  ordinal_position INTEGER, is_nullable VARCHAR, data_type VARCHAR, udt_name VARCHAR,
  numeric_precision INTEGER, numeric_scale INTEGER, datetime_precision INTEGER);
CREATE VIEW pgis.columns AS SELECT 'sqlgate' AS table_catalog, table_schema, table_name,
  column_name, ordinal_position, NULL::VARCHAR AS column_default, is_nullable, data_type,
  NULL::INTEGER AS character_maximum_length, NULL::INTEGER AS character_octet_length,
  numeric_precision, 2 AS numeric_precision_radix, numeric_scale, datetime_precision,
  NULL::VARCHAR AS interval_type, NULL::VARCHAR AS collation_name, 'sqlgate' AS udt_catalog,
  'pg_catalog' AS udt_schema, udt_name, 'NO' AS is_identity, 'NEVER' AS is_generated,
  NULL::VARCHAR AS generation_expression, 'NO' AS is_updatable FROM pgis.columns_base;
CREATE VIEW pgis.views AS SELECT NULL::VARCHAR AS table_catalog, NULL::VARCHAR AS table_schema,
  NULL::VARCHAR AS table_name, NULL::VARCHAR AS view_definition WHERE false;
CREATE VIEW pgis.table_constraints AS SELECT NULL::VARCHAR AS constraint_catalog,
  NULL::VARCHAR AS constraint_schema, NULL::VARCHAR AS constraint_name,
  NULL::VARCHAR AS table_catalog, NULL::VARCHAR AS table_schema, NULL::VARCHAR AS table_name,
  NULL::VARCHAR AS constraint_type WHERE false;
CREATE VIEW pgis.key_column_usage AS SELECT NULL::VARCHAR AS constraint_catalog,
  NULL::VARCHAR AS constraint_schema, NULL::VARCHAR AS constraint_name,
  NULL::VARCHAR AS table_catalog, NULL::VARCHAR AS table_schema, NULL::VARCHAR AS table_name,
  NULL::VARCHAR AS column_name, NULL::INTEGER AS ordinal_position WHERE false;
CREATE VIEW pgis.routines AS SELECT NULL::VARCHAR AS routine_schema, NULL::VARCHAR AS routine_name WHERE false;
CREATE TABLE pgis.character_sets (character_set_name VARCHAR);
INSERT INTO pgis.character_sets VALUES ('UTF8');
"""

# pg functions clients call, as DuckDB macros over the synthetic catalog (sg_ prefix).
_MACROS = """
CREATE MACRO sg_format_type(t, m) AS (SELECT CASE typname WHEN 'int8' THEN 'bigint'
  WHEN 'int4' THEN 'integer' WHEN 'int2' THEN 'smallint' WHEN 'float8' THEN 'double precision'
  WHEN 'float4' THEN 'real' WHEN 'bool' THEN 'boolean' WHEN 'varchar' THEN 'character varying'
  WHEN 'bpchar' THEN 'character' WHEN 'timestamp' THEN 'timestamp without time zone'
  WHEN 'timestamptz' THEN 'timestamp with time zone' WHEN 'char' THEN '"char"'
  ELSE typname END FROM pgc.pg_type WHERE oid = t);
CREATE MACRO sg_pg_get_expr(e, r) AS CAST(NULL AS VARCHAR), (e, r, p) AS CAST(NULL AS VARCHAR);
CREATE MACRO sg_pg_table_is_visible(o) AS true;
CREATE MACRO sg_pg_type_is_visible(o) AS true;
CREATE MACRO sg_pg_function_is_visible(o) AS true;
CREATE MACRO sg_pg_get_userbyid(o) AS 'sqlgate';
CREATE MACRO sg_obj_description(o) AS (SELECT description FROM pgc.pg_description WHERE objoid = o AND objsubid = 0 LIMIT 1),
  (o, c) AS (SELECT description FROM pgc.pg_description WHERE objoid = o AND objsubid = 0 LIMIT 1);
CREATE MACRO sg_col_description(o, n) AS (SELECT description FROM pgc.pg_description WHERE objoid = o AND objsubid = n LIMIT 1);
CREATE MACRO sg_shobj_description(o, c) AS CAST(NULL AS VARCHAR);
CREATE MACRO sg_has_privilege(a) AS true, (a, b) AS true, (a, b, c) AS true;
CREATE MACRO sg_pg_get_constraintdef(o) AS CAST(NULL AS VARCHAR), (o, p) AS CAST(NULL AS VARCHAR);
CREATE MACRO sg_pg_get_indexdef(o) AS CAST(NULL AS VARCHAR), (o, c, p) AS CAST(NULL AS VARCHAR);
CREATE MACRO sg_pg_get_viewdef(o) AS CAST(NULL AS VARCHAR), (o, p) AS CAST(NULL AS VARCHAR);
CREATE MACRO sg_pg_get_statisticsobjdef_columns(o) AS CAST(NULL AS VARCHAR);
CREATE MACRO sg_pg_get_partkeydef(o) AS CAST(NULL AS VARCHAR);
CREATE MACRO sg_pg_get_triggerdef(o) AS CAST(NULL AS VARCHAR), (o, p) AS CAST(NULL AS VARCHAR);
CREATE MACRO sg_pg_encoding_to_char(e) AS 'UTF8';
CREATE MACRO sg_pg_backend_pid() AS (SELECT CAST(setting AS INTEGER) FROM pgc.pg_settings WHERE name = 'sqlgate.backend_pid');
CREATE MACRO sg_current_setting(n) AS (SELECT setting FROM pgc.pg_settings WHERE name = lower(n)),
  (n, m) AS (SELECT setting FROM pgc.pg_settings WHERE name = lower(n));
CREATE MACRO sg_current_schema() AS (SELECT setting FROM pgc.pg_settings WHERE name = 'sqlgate.current_schema');
CREATE MACRO sg_current_schemas(b) AS (SELECT list(nspname ORDER BY oid) FROM pgc.pg_namespace WHERE oid >= 16384 OR (b AND oid = 11));
CREATE MACRO sg_current_database() AS 'sqlgate';
CREATE MACRO sg_current_user() AS (SELECT setting FROM pgc.pg_settings WHERE name = 'session_authorization');
CREATE MACRO sg_version() AS (SELECT setting FROM pgc.pg_settings WHERE name = 'sqlgate.version');
CREATE MACRO sg_pg_is_in_recovery() AS false;
CREATE MACRO sg_pg_postmaster_start_time() AS TIMESTAMP '2000-01-01';
CREATE MACRO sg_inet_server_addr() AS '127.0.0.1';
CREATE MACRO sg_inet_server_port() AS 0;
CREATE MACRO sg_txid_current() AS 1;
CREATE MACRO sg_pg_typeof(x) AS typeof(x);
CREATE MACRO sg_quote_ident(x) AS '"' || replace(x, '"', '""') || '"';
CREATE MACRO sg_to_regclass(x) AS (SELECT oid FROM pgc.pg_class WHERE relname = x LIMIT 1);
CREATE MACRO sg_typname(o) AS (SELECT typname FROM pgc.pg_type WHERE oid = o);
CREATE MACRO sg_relname(o) AS (SELECT relname FROM pgc.pg_class WHERE oid = o);
CREATE MACRO sg_nspname(o) AS (SELECT nspname FROM pgc.pg_namespace WHERE oid = o);
CREATE MACRO sg_pg_relation_size(o) AS 0, (o, f) AS 0;
CREATE MACRO sg_pg_total_relation_size(o) AS 0;
CREATE MACRO sg_pg_size_pretty(o) AS '0 bytes';
CREATE MACRO sg_array_lower(a, d) AS 1;
CREATE MACRO sg_array_upper(a, d) AS len(a);
CREATE MACRO sg_pg_get_serial_sequence(t, c) AS CAST(NULL AS VARCHAR);
CREATE MACRO sg_pg_tablespace_location(o) AS '';
CREATE MACRO sg_pg_get_function_result(o) AS CAST(NULL AS VARCHAR);
CREATE MACRO sg_pg_get_function_arguments(o) AS CAST(NULL AS VARCHAR);
CREATE MACRO sg_pg_get_function_identity_arguments(o) AS CAST(NULL AS VARCHAR);
CREATE MACRO sg_to_regtype(x) AS (SELECT oid FROM pgc.pg_type WHERE typname = x LIMIT 1);
CREATE MACRO sg_pg_relation_is_publishable(o) AS false;
CREATE MACRO sg_pg_get_keywords() AS TABLE SELECT NULL::VARCHAR AS word WHERE false;
"""

_FUNCTIONS = {
    "format_type", "pg_get_expr", "pg_table_is_visible", "pg_type_is_visible",
    "pg_function_is_visible", "pg_get_userbyid", "obj_description", "col_description",
    "shobj_description", "pg_get_constraintdef", "pg_get_indexdef", "pg_get_viewdef",
    "pg_get_statisticsobjdef_columns", "pg_get_partkeydef", "pg_get_triggerdef",
    "pg_encoding_to_char", "pg_backend_pid", "current_setting", "current_schema",
    "current_schemas", "current_database", "version", "pg_is_in_recovery",
    "pg_postmaster_start_time", "inet_server_addr", "inet_server_port", "txid_current",
    "pg_typeof", "quote_ident", "to_regclass", "pg_relation_size", "pg_total_relation_size",
    "pg_size_pretty", "array_lower", "array_upper", "pg_get_serial_sequence",
    "pg_tablespace_location", "pg_relation_is_publishable", "to_regtype", "pg_get_function_result",
    "pg_get_function_arguments", "pg_get_function_identity_arguments", "current_user",
    "session_user", "user", "getpgusername",
}
_PRIVILEGE_FUNCTIONS = {"has_table_privilege", "has_schema_privilege", "has_database_privilege",
                        "has_column_privilege", "has_any_column_privilege", "pg_has_role",
                        "has_function_privilege", "has_sequence_privilege", "has_type_privilege"}

# DuckDB functions that look at the host or the engine rather than at values. The catalog
# engine is sandboxed (no external access) and holds only public metadata; refusing these
# as well keeps them from ever reaching it (they then go to the DP planner, which refuses).
_ENGINE_FUNCTIONS = re.compile(r"^(read_|duckdb_|pragma_|parquet_|sniff_|glob|getenv|"
                               r"which_secret|iceberg_|delta_|sql_auto_complete|"
                               r"query_table|query$|system_)")
# Functions whose output can be far larger than their input (one call can build a string of
# gigabytes, outside DuckDB's memory limit). No catalog introspection needs them.
# (sqlglot names: lpad/rpad parse as "pad"; PG's generate_series as "exploding_generate_series").
# Set-returning helpers stay allowed directly in FROM, where they stream under the row limit.
_AMPLIFYING_FUNCTIONS = {"repeat", "pad", "lpad", "rpad", "printf", "format", "list_resize",
                         "array_resize", "bar", "range", "generate_series",
                         "exploding_generate_series", "list_repeat", "array_fill"}
_NULL_FUNCTIONS = {"json_build_object", "jsonb_build_object", "json_object", "row_to_json",
                   "json_agg", "jsonb_agg", "to_json", "to_jsonb"}
_TABLE_FUNCTIONS = {"generate_series", "exploding_generate_series", "unnest", "generate_subscripts",
                    "explode"}

CATALOG_SCHEMAS = {"pg_catalog": "pgc", "information_schema": "pgis"}


@dataclass(frozen=True)
class CatalogAnswer:
    columns: list[T.Column]
    rows: list[tuple]


class CatalogTables:
    """Names of the relations the synthetic catalog serves (read from its DDL, so a query
    can be classified without building the engine)."""

    def __init__(self):
        found = re.findall(r"CREATE (?:TABLE|VIEW) (pgc|pgis)\.([a-z_]+)", _CATALOG_DDL)
        self.pg_catalog = {name for schema, name in found if schema == "pgc"}
        self.information_schema = {name for schema, name in found if schema == "pgis"}

    def schema_for(self, table: exp.Table) -> str | None:
        """'pgc'/'pgis' if the table is a catalog relation, else None."""
        db = table.db.lower() if table.db else ""
        name = table.name.lower()
        if table.catalog:
            return None
        if db == "pg_catalog" or (not db and name.startswith("pg_")):
            return "pgc"
        if db == "information_schema":
            return "pgis"
        return None


class SyntheticCatalog:
    """One per connection: public metadata of the caller's datasets, nothing else."""

    def __init__(self, datasets, *, user: str, settings: dict[str, str],
                 timeout_s: float = CATALOG_TIMEOUT_S, max_rows: int = MAX_CATALOG_ROWS):
        self.timeout_s = timeout_s
        self.max_rows = max_rows
        self.tables = CatalogTables()
        self.relation_oids: dict[str, int] = dict(WELL_KNOWN_RELATIONS)
        self._datasets = list(datasets)
        self._user = user
        self._settings = dict(settings)
        self._settings_dirty = True
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._lock = threading.Lock()

    @property
    def conn(self) -> duckdb.DuckDBPyConnection:
        """Built on first use: many connections only ever send DP queries."""
        with self._lock:
            if self._conn is None:
                conn = duckdb.connect(":memory:", config={**CATALOG_LIMITS, **SANDBOX_CONFIG})
                conn.execute(_CATALOG_DDL)
                conn.execute(_MACROS)
                self._conn = conn
                self._populate(self._datasets, self._user)
            if self._settings_dirty:
                self._write_settings()
            return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ------------------------------------------------------------ content

    def _populate(self, datasets, user: str) -> None:
        c = self._conn
        namespaces = [(NS_PG_CATALOG, "pg_catalog"), (NS_PUBLIC, "public"),
                      (NS_INFORMATION_SCHEMA, "information_schema")]
        classes, attributes, columns, descriptions = [], [], [], []
        for index, meta in enumerate(sorted(datasets, key=lambda m: m.name)):
            ns_oid = FIRST_DATASET_OID + 1000 * index
            namespaces.append((ns_oid, meta.name))
            if meta.description:
                descriptions.append((ns_oid, 2615, 0, meta.description))
            for t_index, table in enumerate(sorted(meta.tables.values(), key=lambda t: t.name)):
                rel_oid = ns_oid + 1 + t_index
                self.relation_oids.setdefault(table.name.lower(), rel_oid)
                self.relation_oids[f"{meta.name}.{table.name}".lower()] = rel_oid
                # reltuples = -1: "never analyzed"; no sizes or statistics, ever.
                classes.append((rel_oid, table.name, ns_oid, 0, 0, USER_OID, 2, 0, 0, 0, -1.0, 0,
                                0, False, False, "p", "r", len(table.columns), 0, False, False,
                                False, False, False, False, False, True, "d", False, 0, 0, 0,
                                None, None, None))
                for number, column in enumerate(table.columns.values(), start=1):
                    oid = T.SQLGATE_OIDS.get(column.type, T.TEXT)
                    not_null = not column.nullable
                    attributes.append((rel_oid, column.name, oid, -1, T.TYPE_LENGTHS.get(oid, -1),
                                       number, 0, -1, -1, oid != T.TEXT, "p", "d", not_null,
                                       False, False, "", "", False, True, 0,
                                       100 if oid == T.TEXT else 0, None, None, None, None, ""))
                    pg_name = T.TYPE_NAMES[oid]
                    columns.append((meta.name, table.name, column.name, number,
                                    "NO" if not_null else "YES",
                                    T.SQLGATE_TYPE_NAMES.get(column.type, "text"), pg_name,
                                    64 if oid == T.INT8 else (53 if oid == T.FLOAT8 else None),
                                    0 if oid == T.INT8 else None, 0 if oid == T.DATE else None))
        _insert_rows(c, "pgc.pg_namespace", "(?, ?, 10, NULL)", namespaces)
        if classes:
            _insert_rows(c, "pgc.pg_class", _marks(35), classes)
            _insert_rows(c, "pgc.pg_attribute", _marks(26), attributes)
            _insert_rows(c, "pgis.columns_base", _marks(10), columns)
        if descriptions:
            _insert_rows(c, "pgc.pg_description", _marks(4), descriptions)
        _insert_rows(
            c, "pgc.pg_type", _marks(32),
            [(oid, name, NS_PG_CATALOG, USER_OID, length, 0 < length <= 8, "b", category, False,
              True, ",", 0, None, 0, array, f"{name}in", f"{name}out", f"{name}recv",
              f"{name}send", None, None, None, "i", "p", False, 0, -1, 0,
              100 if category == "S" else 0, None, None, None)
             for name, oid, length, category, array in T.TYPES]
            + [(array, "_" + name, NS_PG_CATALOG, USER_OID, -1, False, "b", "A", False, True, ",",
                0, None, oid, 0, "array_in", "array_out", "array_recv", "array_send", None, None,
                None, "i", "x", False, 0, -1, 0, 0, None, None, None)
               for name, oid, _, _, array in T.TYPES if array])
        c.execute("INSERT INTO pgc.pg_database VALUES (?, 'sqlgate', 10, 6, 'c', false, true, -1,"
                  " 0, 0, 1663, 'C.UTF-8', 'C.UTF-8', NULL, NULL, NULL)", [DATABASE_OID])
        c.execute("INSERT INTO pgc.pg_roles VALUES (?, ?, false, true, false, false, true, false,"
                  " -1, '********', NULL, false, NULL)", [USER_OID, user])
        c.execute("INSERT INTO pgc.pg_am VALUES (2, 'heap', 'heap_tableam_handler', 't')")
        c.execute("INSERT INTO pgc.pg_tablespace VALUES (1663, 'pg_default', 10)")
        c.execute("INSERT INTO pgc.pg_collation VALUES (100, 'default', 11, 'd', -1, NULL, NULL)")

    def set_settings(self, settings: dict[str, str]) -> None:
        # Written lazily, before the next catalog query: a client sending many SETs in a row
        # must not rewrite the table for each one (that was quadratic, and slow per SET).
        with self._lock:
            self._settings = dict(settings)
            self._settings_dirty = True

    def _write_settings(self) -> None:
        settings = list(self._settings.items())
        self._conn.execute("DELETE FROM pgc.pg_settings")
        if settings:
            # One statement for all rows: DuckDB's executemany costs a statement per row.
            rows = ", ".join(["(?, ?, 'user', 'string', 'session', ?, ?)"] * len(settings))
            self._conn.execute(
                "INSERT INTO pgc.pg_settings (name, setting, context, vartype, source, boot_val,"
                f" reset_val) VALUES {rows}",
                [v for name, value in settings for v in (name, value, value, value)])
        self._settings_dirty = False

    # ------------------------------------------------------------ queries

    def uses_only_catalog(self, tree: exp.Expression) -> bool:
        """True if every relation the query reads is a catalog relation (or a CTE)."""
        for func in tree.find_all(exp.Func):
            if _ENGINE_FUNCTIONS.match(_function_name(func)):
                return False  # engine/host introspection never runs here, even sandboxed
        ctes = {cte.alias_or_name.lower() for cte in tree.find_all(exp.CTE)}
        for table in tree.find_all(exp.Table):
            if not isinstance(table.this, exp.Identifier):
                # Only harmless set-returning helpers; anything else is not a catalog query.
                if _function_name(table.this) not in _TABLE_FUNCTIONS if isinstance(
                        table.this, exp.Func) else True:
                    return False
                continue
            if not table.db and table.name.lower() in ctes:
                continue
            if self.tables.schema_for(table) is None:
                return False
        return True

    def check_bounded(self, tree: exp.Expression) -> None:
        """Refuse scalar functions that can amplify a constant into gigabytes."""
        for func in tree.find_all(exp.Func):
            if isinstance(func.parent, exp.Table) and func.parent.this is func:
                continue  # a set-returning helper in FROM: bounded by the row limit
            name = _function_name(func)
            if name in _AMPLIFYING_FUNCTIONS:
                shown = {"pad": "lpad/rpad", "exploding_generate_series": "generate_series"}
                raise PolicyRefused(f"{shown.get(name, name)}() is not available in catalog "
                                    f"queries (a scalar call could build gigabytes)")

    def run(self, tree: exp.Expression) -> CatalogAnswer:
        conn = self.conn  # populates relation_oids, which the rewrite below uses
        sql = self.to_duckdb(tree)
        timer = threading.Timer(self.timeout_s, conn.interrupt)
        timer.daemon = True
        timer.start()
        try:
            relation = conn.execute(sql)
            rows = relation.fetchmany(self.max_rows + 1)
            description = relation.description
        except duckdb.InterruptException:
            raise QueryCanceled("canceling catalog query: it ran too long") from None
        except duckdb.OutOfMemoryException:
            raise LimitExceeded("the catalog query needs too much memory") from None
        except duckdb.Error as err:
            log.debug("catalog query answered empty: %s -- %s", sql, err)
            # The synthetic catalog models what clients need; anything else it does not
            # model (an exotic catalog or function) answers as empty rather than failing a
            # client's startup. Only public metadata lives here, so nothing can leak.
            return CatalogAnswer(_projection_columns(tree), [])
        finally:
            timer.cancel()
        if len(rows) > self.max_rows:
            raise LimitExceeded(f"catalog queries return at most {self.max_rows} rows")
        columns = [T.Column(name, T.oid_for_duckdb(str(kind))) for name, kind, *_ in description]
        return CatalogAnswer(columns, rows)

    def to_duckdb(self, tree: exp.Expression) -> str:
        tree = tree.copy()
        for table in list(tree.find_all(exp.Table)):
            if not isinstance(table.this, exp.Identifier):
                table.set("db", None)
                continue
            schema = self.tables.schema_for(table)
            if schema is None:
                continue
            name = table.name.lower()
            # An unmodelled catalog relation fails in the engine; run() then answers empty.
            table.set("db", exp.to_identifier(schema))
            table.set("this", exp.to_identifier(name))
        tree = _post_order(tree, self._rewrite_node)
        return tree.sql(dialect="duckdb")

    def _rewrite_node(self, node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Dot) and isinstance(node.this, (exp.Identifier, exp.Var)) \
                and node.this.name.lower() == "pg_catalog":
            return self._rewrite_node(node.expression)
        if isinstance(node, exp.Column) and node.args.get("db") is not None:
            schema = CATALOG_SCHEMAS.get(node.args["db"].name.lower())
            if schema:
                node.set("db", exp.to_identifier(schema))
                node.set("table", exp.to_identifier(node.table.lower()))
            return node
        if isinstance(node, exp.Column) and node.table.lower() == "pg_catalog" and not node.args.get("db"):
            return exp.column(node.name, quoted=True)
        if isinstance(node, exp.Collate):
            return node.this  # pg collations do not exist here; the "C" order is fine
        if isinstance(node, exp.Operator):
            return _operator(node)
        if isinstance(node, exp.CurrentVersion):
            return exp.Anonymous(this="sg_version", expressions=[])
        if isinstance(node, exp.CurrentSchema):
            return exp.Anonymous(this="sg_current_schema", expressions=[])
        if isinstance(node, (exp.CurrentUser,)) or (
                isinstance(node, exp.Column) and not node.table
                and node.name.lower() in ("current_user", "session_user", "user")
                and not node.this.quoted):
            return exp.Anonymous(this="sg_current_user", expressions=[])
        if isinstance(node, exp.Func):
            name = _function_name(node)
            if name in _NULL_FUNCTIONS or isinstance(node, (exp.JSONObject, exp.JSONObjectAgg)):
                return exp.Null()  # JSON helpers only describe identity/defaults we never have
            if name in _PRIVILEGE_FUNCTIONS:
                arguments = _args(node)[:3] or [exp.true()]
                return exp.Anonymous(this="sg_has_privilege", expressions=arguments)
            if name in _FUNCTIONS:
                user_alias = name in ("session_user", "user", "getpgusername")
                target = "sg_current_user" if user_alias else f"sg_{name}"
                return exp.Anonymous(this=target, expressions=_args(node))
        if isinstance(node, exp.Cast):
            return self._rewrite_cast(node)
        return node

    def _rewrite_cast(self, node: exp.Cast) -> exp.Expression:
        to = node.to
        type_sql = to.sql(dialect="postgres").lower() if to is not None else ""
        type_sql = type_sql.replace("pg_catalog.", "").strip('"')
        value = node.this
        if type_sql in ("regclass", "regclass[]"):
            if isinstance(value, exp.Literal) and value.is_string:
                text = value.name.strip('"').lower()
                return exp.Literal.number(self.relation_oids.get(text, 0))
            return exp.cast(value, "UINTEGER", dialect="duckdb")
        if type_sql in ("oid", "regproc", "regprocedure", "regnamespace", "regrole", "xid", "cid",
                        "tid", "regoper"):
            return exp.cast(value, "UINTEGER", dialect="duckdb")
        if type_sql == "regtype":
            oid = exp.cast(value, "UINTEGER", dialect="duckdb")
            return exp.Anonymous(this="sg_typname", expressions=[oid])
        if type_sql in ("name", "text", "char", '"char"', "bpchar"):
            return exp.cast(value, "VARCHAR")
        if type_sql in ("int2vector", "oidvector", "aclitem[]", "_aclitem"):
            return exp.cast(value, "VARCHAR")
        return node


def _marks(width: int) -> str:
    return "(" + ", ".join("?" * width) + ")"


def _insert_rows(conn, table: str, row: str, rows: list) -> None:
    """Bulk INSERT through a registered DataFrame: DuckDB's executemany (and big parameter
    lists) bind one value at a time, which made a catalog with thousands of columns take
    seconds to build on every connection's first catalog query. `row` is the one-row VALUES
    shape; literal constants in it are filled in by name below."""
    if not rows:
        return
    import pandas as pd
    width = len(rows[0])
    frame = pd.DataFrame.from_records(rows, columns=[f"c{i}" for i in range(width)])
    parts, index = [], 0
    for item in row.strip()[1:-1].split(","):
        item = item.strip()
        if item == "?":
            parts.append(f"c{index}")
            index += 1
        else:
            parts.append(item)
    conn.register("_sg_rows", frame)
    try:
        conn.execute(f"INSERT INTO {table} SELECT {', '.join(parts)} FROM _sg_rows")
    finally:
        conn.unregister("_sg_rows")


def _post_order(node: exp.Expression, rewrite) -> exp.Expression:
    """Rewrite children before their parent, so nested casts/functions all get rewritten."""
    for key, value in list(node.args.items()):
        if isinstance(value, exp.Expression):
            node.set(key, _post_order(value, rewrite))
        elif isinstance(value, list):
            node.set(key, [_post_order(v, rewrite) if isinstance(v, exp.Expression) else v
                           for v in value])
    return rewrite(node)


def _operator(node: exp.Operator) -> exp.Expression:
    op = str(node.args.get("operator")).lower().replace("pg_catalog.", "").strip()
    left, right = node.this, node.expression
    if op in ("~", "~*", "!~", "!~*"):
        args = [left, right] + ([exp.Literal.string("i")] if "*" in op else [])
        match = exp.Anonymous(this="regexp_matches", expressions=args)
        return exp.Not(this=match) if op.startswith("!") else match
    binary = {"=": exp.EQ, "<>": exp.NEQ, "!=": exp.NEQ, "<": exp.LT, "<=": exp.LTE, ">": exp.GT,
              ">=": exp.GTE, "~~": exp.Like, "~~*": exp.ILike}.get(op)
    if binary is None:
        return node
    return binary(this=left, expression=right)


def _function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.this).lower().split(".")[-1]
    return node.sql_name().lower() if hasattr(node, "sql_name") else type(node).__name__.lower()


def _args(node: exp.Func) -> list[exp.Expression]:
    if isinstance(node, exp.Anonymous):
        return list(node.expressions)
    args = []
    for key in node.arg_types:
        value = node.args.get(key)
        if value is None:
            continue
        args.extend(value if isinstance(value, list) else [value])
    return args


def _projection_columns(tree: exp.Expression) -> list[T.Column]:
    select = tree if isinstance(tree, exp.Select) else tree.find(exp.Select)
    if select is None:
        return []
    names = []
    for projection in select.expressions:
        name = projection.alias_or_name
        names.append(T.Column(name if name and name != "*" else "?column?", T.TEXT))
    return names

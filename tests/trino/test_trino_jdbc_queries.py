"""The catalog SQL that JDBC tools (DBeaver, Metabase, Tableau) send, replayed verbatim.

The statements are those of the Trino JDBC driver's DatabaseMetaData (getTables,
getColumns, ...) and the SHOW/DESCRIBE forms BI drivers use for schema browsing.
"""
from __future__ import annotations

import pytest

from tests.trino.test_trino_dbapi import connect, run

ESC = "'\\'"
JDBC_QUERIES = {
    "getCatalogs": "SELECT TABLE_CAT\nFROM system.jdbc.catalogs\nORDER BY TABLE_CAT",
    "getSchemas": "SELECT TABLE_SCHEM, TABLE_CATALOG\nFROM system.jdbc.schemas\n"
                  "WHERE TABLE_CATALOG = 'sqlgate' AND TABLE_SCHEM LIKE 'hosp%' ESCAPE " + ESC
                  + "\nORDER BY TABLE_CATALOG, TABLE_SCHEM",
    "getTableTypes": "SELECT TABLE_TYPE\nFROM system.jdbc.table_types\nORDER BY TABLE_TYPE",
    "getTables": "SELECT TABLE_CAT, TABLE_SCHEM, TABLE_NAME, TABLE_TYPE, REMARKS,\n"
                 "  TYPE_CAT, TYPE_SCHEM, TYPE_NAME,   SELF_REFERENCING_COL_NAME, "
                 "REF_GENERATION\nFROM system.jdbc.tables\nWHERE TABLE_CAT = 'sqlgate' AND "
                 "TABLE_SCHEM LIKE 'hospital' ESCAPE " + ESC + " AND TABLE_NAME LIKE '%' ESCAPE "
                 + ESC + " AND TABLE_TYPE IN ('TABLE', 'VIEW')\n"
                 "ORDER BY TABLE_TYPE, TABLE_CAT, TABLE_SCHEM, TABLE_NAME",
    "getColumns": "SELECT TABLE_CAT, TABLE_SCHEM, TABLE_NAME, COLUMN_NAME, DATA_TYPE,\n"
                  "  TYPE_NAME, COLUMN_SIZE, BUFFER_LENGTH, DECIMAL_DIGITS, NUM_PREC_RADIX,\n"
                  "  NULLABLE, REMARKS, COLUMN_DEF, SQL_DATA_TYPE, SQL_DATETIME_SUB,\n"
                  "  CHAR_OCTET_LENGTH, ORDINAL_POSITION, IS_NULLABLE,\n"
                  "  SCOPE_CATALOG, SCOPE_SCHEMA, SCOPE_TABLE,\n"
                  "  SOURCE_DATA_TYPE, IS_AUTOINCREMENT, IS_GENERATEDCOLUMN\n"
                  "FROM system.jdbc.columns\nWHERE TABLE_CAT = 'sqlgate' AND TABLE_SCHEM LIKE "
                  "'hospital' ESCAPE " + ESC + " AND TABLE_NAME LIKE 'patients' ESCAPE " + ESC
                  + "\nORDER BY TABLE_CAT, TABLE_SCHEM, TABLE_NAME, ORDINAL_POSITION",
    "getTypeInfo": "SELECT TYPE_NAME, DATA_TYPE, PRECISION, LITERAL_PREFIX, LITERAL_SUFFIX,\n"
                   "CREATE_PARAMS, NULLABLE, CASE_SENSITIVE, SEARCHABLE, UNSIGNED_ATTRIBUTE,\n"
                   "FIXED_PREC_SCALE, AUTO_INCREMENT, LOCAL_TYPE_NAME, MINIMUM_SCALE, "
                   "MAXIMUM_SCALE,\nSQL_DATA_TYPE, SQL_DATETIME_SUB, NUM_PREC_RADIX\n"
                   "FROM system.jdbc.types\nORDER BY DATA_TYPE",
    "getPrimaryKeys": "SELECT  CAST(NULL AS varchar) TABLE_CAT,  CAST(NULL AS varchar) "
                      "TABLE_SCHEM,  CAST(NULL AS varchar) TABLE_NAME,  CAST(NULL AS varchar) "
                      "COLUMN_NAME,  CAST(NULL AS smallint) KEY_SEQ,  CAST(NULL AS varchar) "
                      "PK_NAME WHERE false",
    "getProcedures": "SELECT PROCEDURE_CAT, PROCEDURE_SCHEM, PROCEDURE_NAME,\n   null, null, "
                     "null, REMARKS, PROCEDURE_TYPE, SPECIFIC_NAME\nFROM "
                     "system.jdbc.procedures\nORDER BY PROCEDURE_CAT, PROCEDURE_SCHEM, "
                     "PROCEDURE_NAME, SPECIFIC_NAME LIMIT 0",
    "getUDTs": "SELECT TYPE_CAT, TYPE_SCHEM, TYPE_NAME,\n  CLASS_NAME, DATA_TYPE, REMARKS, "
               "BASE_TYPE\nFROM system.jdbc.udts\nORDER BY DATA_TYPE, TYPE_CAT, TYPE_SCHEM, "
               "TYPE_NAME LIMIT 0",
    "getSuperTables": "SELECT TABLE_CAT, TABLE_SCHEM, TABLE_NAME, SUPERTABLE_NAME\nFROM "
                      "system.jdbc.super_tables\nORDER BY TABLE_CAT, TABLE_SCHEM, TABLE_NAME "
                      "LIMIT 0",
    "getPseudoColumns": "SELECT TABLE_CAT, TABLE_SCHEM, TABLE_NAME, COLUMN_NAME, DATA_TYPE,\n"
                        "  COLUMN_SIZE, DECIMAL_DIGITS, NUM_PREC_RADIX, COLUMN_USAGE, REMARKS,\n"
                        "  CHAR_OCTET_LENGTH, IS_NULLABLE\nFROM system.jdbc.pseudo_columns\n"
                        "ORDER BY TABLE_CAT, table_SCHEM, TABLE_NAME, COLUMN_NAME LIMIT 0",
}


@pytest.fixture(scope="module")
def conn(live):
    return connect(live, schema=None)


def test_jdbc_metadata_queries(conn):
    results = {name: run(conn, sql) for name, sql in JDBC_QUERIES.items()}
    assert results["getCatalogs"][0] == [["sqlgate"], ["system"]]
    assert results["getSchemas"][0] == [["hospital", "sqlgate"]]
    assert "TABLE" in [r[0] for r in results["getTableTypes"][0]]
    tables, cursor = results["getTables"]
    assert [r[:4] for r in tables] == [["sqlgate", "hospital", "patients", "TABLE"]]
    # Unquoted names come back lower-case, as Trino names them (JDBC reads them by label).
    assert [d.name for d in cursor.description][:3] == ["table_cat", "table_schem", "table_name"]
    columns, _ = results["getColumns"]
    assert [(r[3], r[4], r[5]) for r in columns] == [
        ("pid", -5, "bigint"), ("age", -5, "bigint"), ("bmi", 8, "double"),
        ("region", 12, "varchar"), ("sex", 12, "varchar"), ("note", 12, "varchar")]
    assert [r[16] for r in columns] == [1, 2, 3, 4, 5, 6]
    assert {r[0] for r in results["getTypeInfo"][0]} >= {"bigint", "double", "varchar"}
    for name in ("getPrimaryKeys", "getProcedures", "getUDTs", "getSuperTables",
                 "getPseudoColumns"):
        rows, cursor = results[name]
        assert rows == [] and cursor.description, name


@pytest.mark.parametrize("sql, expected", [
    ('SHOW SCHEMAS FROM "sqlgate"', [["hospital"], ["information_schema"]]),
    ("SHOW SCHEMAS FROM sqlgate LIKE 'hos%' ESCAPE '\\'", [["hospital"]]),
    ('SHOW TABLES FROM "sqlgate"."hospital"', [["patients"]]),
    ('SELECT COUNT(*) FROM "sqlgate"."information_schema"."columns" '
     "WHERE table_schema = 'hospital'", [[6]]),
])
def test_bi_driver_browsing(conn, sql, expected):
    assert run(conn, sql)[0] == expected


def test_describe_fully_qualified(conn):
    rows, _ = run(conn, 'DESCRIBE "sqlgate"."hospital"."patients"')
    assert [r[0] for r in rows] == ["pid", "age", "bmi", "region", "sex", "note"]

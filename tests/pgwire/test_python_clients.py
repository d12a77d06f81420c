"""Python PostgreSQL clients against the running PG wire server (loopback, free port)."""
from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from sqlgate.metadata import Budget
from tests._require import require_module
from tests.pgwire.conftest import PASSWORD

pytestmark = pytest.mark.clients

REGIONS = {"north", "south", "east", "west"}


# ---------------------------------------------------------------- psycopg 3


def test_psycopg_text_binary_params_and_prepared(pg):
    psycopg = require_module("psycopg")
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        rows = conn.execute("SELECT region, COUNT(*) AS n FROM people GROUP BY region "
                            "ORDER BY region").fetchall()
        assert {r[0] for r in rows} == REGIONS
        assert all(isinstance(r[1], int) for r in rows)
        # Binary results, typed parameters (int8 / text), server-side prepared statement.
        cur = conn.cursor(binary=True)
        cur.execute("SELECT COUNT(*) AS n, AVG(age) AS mean_age FROM people WHERE age >= %s "
                    "AND region = %s", [30, "north"], prepare=True)
        [(count, mean_age)] = cur.fetchall()
        assert isinstance(count, int) and isinstance(mean_age, float)
        assert [d.type_code for d in cur.description] == [20, 701]
        # The same statement again: prepared, and the repeat is the cached answer (free).
        spent = pg.spent()
        cur.execute("SELECT COUNT(*) AS n, AVG(age) AS mean_age FROM people WHERE age >= %s "
                    "AND region = %s", [30, "north"], prepare=True)
        assert cur.fetchall() == [(count, mean_age)]
        assert pg.spent() == spent
        assert conn.execute("SELECT version()").fetchone()[0].startswith("PostgreSQL 16")


def test_psycopg_injection_in_parameters_is_a_value(pg):
    psycopg = require_module("psycopg")
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        evil = "north' OR '1'='1"
        [(n,)] = conn.execute("SELECT COUNT(*) FROM people WHERE region = %s", [evil]).fetchall()
        # A region that does not exist: the count is noise around zero, not the table size.
        assert abs(n) < 200
        [(name,)] = conn.execute("SELECT relname FROM pg_catalog.pg_class WHERE relname = %s",
                                 ["people'; DROP TABLE x; --"]).fetchall() or [(None,)]
        assert name is None


def test_psycopg_errors_have_sqlstates_and_keep_connection(pg):
    psycopg = require_module("psycopg")
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        cases = {
            "SELEC 1 FROM people": "42601",
            "SELECT pid FROM people": "42501",
            "DELETE FROM people": "25006",
            "CREATE TABLE t (x int)": "25006",
            "SELECT COUNT(*) FROM people UNION SELECT COUNT(*) FROM people": "0A000",
            "SELECT COUNT(*) FROM nowhere": "42P01",
            "COPY people TO STDOUT": "42501",
        }
        for sql, state in cases.items():
            with pytest.raises(psycopg.Error) as info:
                conn.execute(sql)
            assert info.value.sqlstate == state, sql
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_psycopg_transaction_block_and_failed_state(pg):
    psycopg = require_module("psycopg")
    with psycopg.connect(pg.dsn()) as conn:  # not autocommit: psycopg sends BEGIN
        assert conn.execute("SELECT COUNT(*) FROM people").fetchone()[0] > 0
        with pytest.raises(psycopg.Error):
            conn.execute("SELECT pid FROM people")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)
        conn.commit()


def test_named_cursor_chunks_are_one_answer_charged_once(pg):
    psycopg = require_module("psycopg")
    sql = "SELECT age, COUNT(*) AS n FROM people WHERE age < 40 GROUP BY age ORDER BY age"
    before_spent, before_queries = pg.spent(), pg.queries()
    with psycopg.connect(pg.dsn()) as conn:
        with conn.cursor(name="pages") as cur:
            cur.itersize = 7
            cur.execute(sql, binary=True)
            first = cur.fetchmany(7)
            rest = cur.fetchall()
        conn.commit()
    rows = first + rest
    assert len(first) == 7 and len(rows) > 7
    ages = [r[0] for r in rows]
    assert ages == sorted(ages) and len(set(ages)) == len(ages)
    # One noisy answer, charged once, however many pages.
    assert pg.queries() == before_queries + 1
    assert pg.spent() == pytest.approx(before_spent + 1.0)


def test_describe_and_prepare_spend_nothing(pg):
    asyncpg = require_module("asyncpg")
    psycopg = require_module("psycopg")
    before = (pg.spent(), pg.queries())

    async def prepare_only():
        conn = await asyncpg.connect(host="127.0.0.1", port=pg.port, user="alice",
                                     password=PASSWORD, database="sqlgate", ssl=False)
        try:
            # Parse + Describe only: never executes.
            statement = await conn.prepare(
                "SELECT region, SUM(score) AS total FROM people WHERE age > $1 GROUP BY region")
            return ([(a.name, a.type.oid) for a in statement.get_attributes()],
                    [p.oid for p in statement.get_parameters()])
        finally:
            await conn.close()

    attributes, parameters = asyncio.run(prepare_only())
    assert attributes == [("region", 25), ("total", 701)]
    assert parameters == [20]
    assert (pg.spent(), pg.queries()) == before
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        # EXPLAIN answers the cost without spending it.
        plan = conn.execute("EXPLAIN SELECT COUNT(*) FROM people").fetchall()
        assert any("epsilon" in line for (line,) in plan)
    assert (pg.spent(), pg.queries()) == before


def test_session_epsilon_setting(pg):
    psycopg = require_module("psycopg")
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("SET sqlgate.epsilon = 0.25")
        assert conn.execute("SHOW sqlgate.epsilon").fetchone() == ("0.25",)
        before = pg.spent()
        conn.execute("SELECT COUNT(*) FROM people WHERE age > 77").fetchall()
        assert pg.spent() == pytest.approx(before + 0.25)
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SET sqlgate.epsilon = -1")
        assert info.value.sqlstate == "22023"
        assert conn.execute("SHOW sqlgate.epsilon").fetchone() == ("0.25",)
        conn.execute("RESET sqlgate.epsilon")
        assert conn.execute("SHOW sqlgate.epsilon").fetchone() == ("default",)


def test_budget_exhausted_is_53400(pg):
    psycopg = require_module("psycopg")
    pg.service.users.create_user("carol", "analyst", password="carol-secret-pw")
    pg.service.users.grant("carol", "town", "query")
    pg.gateway.set_budget("carol", "town", Budget(epsilon=1.5, delta=1e-6))
    with psycopg.connect(pg.dsn("carol", "carol-secret-pw"), autocommit=True) as conn:
        conn.execute("SELECT COUNT(*) FROM people WHERE age > 1").fetchall()
        with pytest.raises(psycopg.Error) as info:
            conn.execute("SELECT COUNT(*) FROM people WHERE age > 2").fetchall()
        assert info.value.sqlstate == "53400"
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_login_failures_and_scoping(pg):
    psycopg = require_module("psycopg")
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(pg.dsn("alice", "wrong-password"))
    assert "password authentication failed" in str(info.value)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg.dsn("nobody", PASSWORD))
    records = pg.audit.records(action="login", channel="pgwire")
    assert any(r["decision"] == "refused" and r["actor"] == "alice" for r in records)
    assert any(r["decision"] == "ok" and r["actor"] == "alice" for r in records)
    # bob has no grant: the dataset looks missing, and the catalog does not list it.
    with psycopg.connect(pg.dsn("bob", "bob-secret-pw1"), autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as err:
            conn.execute("SELECT COUNT(*) FROM people")
        assert err.value.sqlstate == "42P01"
        assert conn.execute("SELECT relname FROM pg_class").fetchall() == []
        assert conn.execute("SELECT table_name FROM information_schema.tables").fetchall() == []


def test_catalog_has_no_statistics(pg):
    psycopg = require_module("psycopg")
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        rows = conn.execute("SELECT relname, reltuples, relpages FROM pg_catalog.pg_class "
                            "WHERE relkind = 'r'").fetchall()
        assert rows == [("people", -1.0, 0)]
        columns = conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                               "WHERE table_name = 'people' ORDER BY ordinal_position").fetchall()
        assert columns[:3] == [("pid", "bigint"), ("age", "bigint"), ("score", "double precision")]
        settings = dict(conn.execute("SELECT name, setting FROM pg_settings").fetchall())
        assert settings["server_version"] == "16.4"


# ---------------------------------------------------------------- psycopg2


def test_psycopg2(pg):
    psycopg2 = require_module("psycopg2")
    conn = psycopg2.connect(pg.dsn())
    try:
        cur = conn.cursor()
        cur.execute("SELECT region, COUNT(*) FROM people WHERE age > %s GROUP BY region", (20,))
        rows = cur.fetchall()
        assert {r[0] for r in rows} == REGIONS
        cur.execute("SELECT COUNT(*) FROM people WHERE region = %s", ("it's",))
        assert isinstance(cur.fetchone()[0], int)
        with pytest.raises(psycopg2.Error) as info:
            cur.execute("UPDATE people SET age = 1")
        assert info.value.pgcode == "25006"
        conn.rollback()
        cur.execute("SELECT 1; SELECT 2")
        assert cur.fetchall() == [(2,)]
    finally:
        conn.close()


# ---------------------------------------------------------------- asyncpg


def test_asyncpg_binary_and_prepared(pg):
    asyncpg = require_module("asyncpg")

    async def main():
        conn = await asyncpg.connect(host="127.0.0.1", port=pg.port, user="alice",
                                     password=PASSWORD, database="sqlgate", ssl=False)
        try:
            rows = await conn.fetch("SELECT region, COUNT(*) AS n, AVG(score) AS s FROM people "
                                    "WHERE age > $1 GROUP BY region", 10)
            assert {r["region"] for r in rows} == REGIONS
            assert all(isinstance(r["n"], int) and isinstance(r["s"], float) for r in rows)
            statement = await conn.prepare("SELECT COUNT(*) AS n FROM people WHERE age < $1 "
                                           "AND region = $2")
            assert [a.name for a in statement.get_parameters()] == ["int8", "text"]
            value = await statement.fetchval(50, "east")
            assert isinstance(value, int)
            with pytest.raises(asyncpg.PostgresError) as info:
                await conn.fetch("SELECT pid FROM people")
            assert info.value.sqlstate == "42501"
            assert await conn.fetchval("SELECT 41 + 1") == 42
            # Catalog answers in binary too, arrays and oids included.
            assert await conn.fetchval("SELECT current_schemas(false)") == ["town"]
            row = await conn.fetchrow("SELECT oid, relname, reltuples FROM pg_class")
            assert row["relname"] == "people" and row["reltuples"] == -1.0 and row["oid"] > 0
        finally:
            await conn.close()

    asyncio.run(main())


# ---------------------------------------------------------------- pg8000


def test_pg8000(pg):
    require_module("pg8000")
    import pg8000.native
    conn = pg8000.native.Connection("alice", host="127.0.0.1", port=pg.port, password=PASSWORD,
                             database="sqlgate")
    try:
        rows = conn.run("SELECT region, COUNT(*) FROM people WHERE age > :a GROUP BY region", a=5)
        assert {r[0] for r in rows} == REGIONS
        with pytest.raises(pg8000.native.DatabaseError) as info:
            conn.run("DROP TABLE people")
        assert info.value.args[0]["C"] == "25006"
        assert conn.run("SELECT current_date")[0][0] == dt.date.today()
    finally:
        conn.close()


# ---------------------------------------------------------------- SQLAlchemy + pandas


def test_sqlalchemy_inspector_and_pandas(pg):
    sqlalchemy = require_module("sqlalchemy")
    pandas = require_module("pandas")
    engine = sqlalchemy.create_engine(pg.dsn().replace("postgresql://", "postgresql+psycopg://"))
    try:
        inspector = sqlalchemy.inspect(engine)
        assert "town" in inspector.get_schema_names()
        assert inspector.get_table_names(schema="town") == ["people"]
        assert inspector.get_table_names() == ["people"]  # current_schema is the dataset
        columns = {c["name"]: c for c in inspector.get_columns("people", schema="town")}
        assert isinstance(columns["age"]["type"], sqlalchemy.BigInteger)
        assert isinstance(columns["score"]["type"], sqlalchemy.Float)
        assert isinstance(columns["region"]["type"], sqlalchemy.Text)
        assert columns["age"]["nullable"] is False
        assert inspector.has_table("people", schema="town")
        frame = pandas.read_sql("SELECT region, COUNT(*) AS n FROM people GROUP BY region",
                                engine)
        assert set(frame["region"]) == REGIONS and len(frame) == 4
        with engine.connect() as conn:
            frame = pandas.read_sql(sqlalchemy.text("SELECT AVG(age) AS a FROM people WHERE "
                                                    "region = :r"), conn, params={"r": "west"})
            assert 0 <= frame["a"][0] <= 100
    finally:
        engine.dispose()
    engine2 = sqlalchemy.create_engine(pg.dsn().replace("postgresql://", "postgresql+psycopg2://"))
    try:
        assert sqlalchemy.inspect(engine2).get_table_names(schema="town") == ["people"]
    finally:
        engine2.dispose()

"""The PEP 249 module and the `sqlgate+http://` SQLAlchemy dialect against a running server."""
from __future__ import annotations

import datetime as dt
import warnings

import pandas as pd
import pytest

from sqlgate.client import dbapi
from sqlgate.errors import BudgetExhausted, PolicyRefused
from sqlgate.metadata import Budget
from tests._require import require_module
from tests.client.live import SECRET_NOTE


@pytest.fixture
def conn(live):
    connection = dbapi.connect(live.url, token=live.tokens["ann"])
    yield connection
    connection.close()


def test_module_globals():
    assert dbapi.apilevel == "2.0" and dbapi.paramstyle == "pyformat"
    assert dbapi.threadsafety == 1
    assert issubclass(dbapi.ProgrammingError, dbapi.DatabaseError)
    assert issubclass(dbapi.DatabaseError, dbapi.Error)
    assert "int" == dbapi.NUMBER and "string" == dbapi.STRING and "date" == dbapi.DATETIME
    assert "string" != dbapi.NUMBER


def test_bind_renders_safe_literals():
    assert dbapi.bind("SELECT %s, %s, %s", ("it's", 2, None)) == "SELECT 'it''s', 2, NULL"
    assert dbapi.bind("x = %(a)s AND y LIKE 'a%%' AND z = %(a)s", {"a": 1.5}) == \
        "x = 1.5 AND y LIKE 'a%' AND z = 1.5"
    assert dbapi.bind("d = %s", (dt.date(2024, 1, 2),)) == "d = CAST('2024-01-02' AS DATE)"
    assert dbapi.bind("b = %s", [True]) == "b = TRUE"
    for operation, params in [("SELECT %s, %s", (1,)), ("SELECT %s", (1, 2)),
                              ("SELECT %(a)s", {"b": 1}), ("SELECT %(a)s", (1,)),
                              ("SELECT %s", {"a": 1}), ("SELECT %s", "abc"),
                              ("SELECT %s", (object(),)), ("SELECT %s", (float("inf"),))]:
        with pytest.raises(dbapi.ProgrammingError):
            dbapi.bind(operation, params)


def test_execute_fetch_and_metadata(conn, live):
    cur = conn.cursor()
    cur.execute("SELECT region, COUNT(*) AS n, AVG(age) AS mean_age FROM patients "
                "WHERE age > %(age)s AND sex = %(sex)s GROUP BY region ORDER BY region",
                {"age": 30, "sex": "f"})
    assert [d[0] for d in cur.description] == ["region", "n", "mean_age"]
    assert cur.description[0][1] == dbapi.STRING and cur.description[1][1] == dbapi.NUMBER
    assert cur.rowcount == 4
    first = cur.fetchone()
    assert first[0] == "east"
    assert [r[0] for r in cur.fetchmany(2)] == ["north", "south"]
    assert [r[0] for r in cur.fetchall()] == ["west"]
    assert cur.fetchone() is None and cur.fetchall() == []
    assert cur.sqlgate["cost"]["epsilon"] == 0.5 and set(cur.sqlgate["ci95"]) == {"n",
                                                                                 "mean_age"}
    # The same statement again is the remembered answer.
    rows = list(cur.execute("SELECT region, COUNT(*) AS n, AVG(age) AS mean_age FROM patients "
                            "WHERE age > %s AND sex = %s GROUP BY region ORDER BY region",
                            (30, "f")))
    assert rows[0] == first and cur.sqlgate["cached"] is True


def test_errors_map_to_pep249_classes(conn, live):
    cur = conn.cursor()
    with pytest.raises(dbapi.ProgrammingError) as err:
        cur.execute("SELECT * FROM patients")
    assert err.value.code == "refused_by_policy" and err.value.sqlstate == "42501"
    assert isinstance(err.value.__cause__, PolicyRefused)
    assert SECRET_NOTE not in str(err.value)
    with pytest.raises(dbapi.NotSupportedError):
        cur.execute("DELETE FROM patients")
    with pytest.raises(dbapi.ProgrammingError):
        cur.fetchall()                        # the failed execute left no result
    live.state.gateway.set_budget("olga", "hospital", Budget(0.2, 1e-6), set_by="test")
    owner = dbapi.connect(live.url, user="olga", password=live.password("olga"))
    with pytest.raises(dbapi.OperationalError) as err:
        owner.cursor().execute("SELECT COUNT(*) FROM patients")
    assert isinstance(err.value.__cause__, BudgetExhausted)
    assert "remaining_epsilon" in err.value.details
    owner.close()
    with pytest.raises(dbapi.InterfaceError):
        dbapi.connect("not-a-url", token="x")
    cur.close()
    with pytest.raises(dbapi.InterfaceError):
        cur.execute("SELECT 1")
    conn.close()
    with pytest.raises(dbapi.InterfaceError):
        conn.cursor()


def test_connection_epsilon(live):
    with dbapi.connect(live.url, token=live.tokens["ann"], epsilon=0.125) as conn:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) AS n FROM patients WHERE age < 70")
        assert cur.sqlgate["cost"]["epsilon"] == 0.125


def test_pandas_read_sql_with_a_dbapi_connection(conn):
    with warnings.catch_warnings():
        # pandas warns that it only tests SQLAlchemy and sqlite3 connections; it still works.
        warnings.simplefilter("ignore", UserWarning)
        frame = pd.read_sql("SELECT sex, AVG(bmi) AS bmi FROM patients WHERE region = %s "
                            "GROUP BY sex ORDER BY sex", conn, params=("north",))
    assert list(frame["sex"]) == ["f", "m"] and frame["bmi"].dtype.kind == "f"


@pytest.fixture
def engine(live):
    sa = require_module("sqlalchemy")
    from sqlalchemy.dialects import registry
    # Installed packages get this from the entry point; register it for the source tree too.
    registry.register("sqlgate.http", "sqlgate.client.sqlalchemy", "SqlgateDialect")
    engine = sa.create_engine(f"sqlgate+http://ann:{live.password('ann')}@{live.host}:"
                              f"{live.port}/hospital")
    yield engine
    engine.dispose()


def test_sqlalchemy_dialect(engine, live):
    import sqlalchemy as sa
    inspector = sa.inspect(engine)
    assert inspector.get_schema_names() == ["hospital"]
    assert inspector.get_table_names("hospital") == ["patients"]
    columns = inspector.get_columns("patients", "hospital")
    assert [c["name"] for c in columns][:3] == ["pid", "age", "bmi"]
    assert isinstance(columns[1]["type"], sa.BigInteger) and columns[1]["nullable"] is False
    assert inspector.has_table("patients", "hospital")
    assert not inspector.has_table("visits", "hospital")
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # a real SQLAlchemy connectable: no warning
        frame = pd.read_sql(sa.text("SELECT COUNT(*) AS n FROM patients WHERE region = :r"),
                            engine, params={"r": "east"})
    assert frame["n"].dtype.kind == "i"
    table = sa.Table("patients", sa.MetaData(), autoload_with=engine, schema="hospital")
    query = sa.select(table.c.sex, sa.func.avg(table.c.age).label("mean_age")) \
        .where(table.c.age > 10).group_by(table.c.sex).order_by(table.c.sex).limit(5)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
        assert [r.sex for r in rows] == ["f", "m"]
        with pytest.raises(sa.exc.DBAPIError):
            conn.execute(sa.select(table.c.note))
    token_engine = sa.create_engine(f"sqlgate+http://{live.host}:{live.port}/"
                                    f"?token={live.tokens['ann']}&epsilon=0.25")
    frame = pd.read_sql("SELECT COUNT(*) AS n FROM patients WHERE age > 81", token_engine)
    assert len(frame) == 1
    token_engine.dispose()
    with pytest.raises(ValueError):
        sa.create_engine(f"sqlgate+http://{live.host}:{live.port}/?bogus=1").connect()

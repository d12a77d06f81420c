"""The `trino://` SQLAlchemy dialect (inspector, Core, pandas.read_sql) against sqlgate."""
from __future__ import annotations

import pandas as pd
import pytest

from tests._require import require_module
from tests.client.live import SECRET_NOTE

sa = require_module("sqlalchemy")
require_module("trino")


@pytest.fixture(scope="module")
def engine(live):
    # Plain http in tests: the dialect refuses credentials over http unless told it is safe.
    url = (f"trino://ann:{live.password('ann')}@{live.host}:{live.port}/sqlgate/hospital"
           f"?allow_insecure_auth=true")
    engine = sa.create_engine(url)
    yield engine
    engine.dispose()


def test_inspector_browses_the_catalog(engine):
    inspector = sa.inspect(engine)
    assert inspector.get_schema_names() == ["hospital", "information_schema"]
    assert inspector.get_table_names("hospital") == ["patients"]
    assert inspector.get_view_names("hospital") == []
    columns = inspector.get_columns("patients", "hospital")
    assert [c["name"] for c in columns] == ["pid", "age", "bmi", "region", "sex", "note"]
    assert isinstance(columns[1]["type"], sa.BigInteger)
    assert isinstance(columns[3]["type"], sa.String)
    assert columns[1]["nullable"] is False and columns[3]["nullable"] is True
    assert columns[2]["comment"] == "bounds [15, 50]"
    assert inspector.has_table("patients", "hospital")
    assert not inspector.has_table("missing", "hospital")
    assert inspector.get_table_comment("patients", "hospital") == \
        {"text": "patients of a small hospital"}
    assert inspector.get_pk_constraint("patients", "hospital")["constrained_columns"] == []
    assert inspector.get_indexes("patients", "hospital") == []
    with engine.connect() as conn:
        assert engine.dialect.get_catalog_names(conn) == ["sqlgate", "system"]
        assert engine.dialect.has_schema(conn, "hospital")
        assert not engine.dialect.has_schema(conn, "shop")
    with pytest.raises(sa.exc.NoSuchTableError):
        inspector.get_columns("missing", "hospital")


def test_pandas_read_sql_and_core(engine, live):
    before = live.state.gateway.budget("ann", "hospital").queries
    with engine.connect() as conn:
        frame = pd.read_sql("SELECT sex, COUNT(*) AS n, AVG(age) AS mean_age FROM patients "
                            "GROUP BY sex ORDER BY sex", conn)
        assert list(frame.columns) == ["sex", "n", "mean_age"]
        assert list(frame["sex"]) == ["f", "m"]
        bound = pd.read_sql(sa.text("SELECT COUNT(*) AS n FROM patients WHERE region = :r "
                                    "AND age > :a"), conn, params={"r": "north", "a": 30})
        assert len(bound) == 1 and bound["n"].dtype.kind == "i"
        table = sa.Table("patients", sa.MetaData(), autoload_with=conn, schema="hospital")
        query = sa.select(table.c.region, sa.func.count().label("n")) \
            .where(table.c.age > 40).group_by(table.c.region).order_by(table.c.region)
        rows = conn.execute(query).all()
        assert [r.region for r in rows] == ["east", "north", "south", "west"]
        assert conn.execute(sa.text("SELECT version()")).scalar() == "476-sqlgate"
        with pytest.raises(sa.exc.DBAPIError) as err:
            conn.execute(sa.select(table.c.note))
        assert "raw rows" in str(err.value) or "PERMISSION_DENIED" in str(err.value)
        assert SECRET_NOTE not in str(err.value)
    assert live.state.gateway.budget("ann", "hospital").queries == before + 3

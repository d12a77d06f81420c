"""`unique: true` on a table's privacy_unit column: one row per unit (a primary key), checked
at load, so queries read the table as it is stored, with no per-unit truncation, and take the
direct path with one row per unit.

The bounded SQL is run exactly (`executor.run(plan.bounded_sql)` has no noise), so the answers
and bounds are checked on the numbers the noise is calibrated for."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from sqlgate.errors import DataLoadError, MetadataError
from sqlgate.gateway import Gateway
from sqlgate.metadata import dataset_to_dict, enforced_key_columns, parse_dataset

from tests.core.conftest import people_frame, people_metadata


def _columns(**pid):
    return {"pid": {"type": "int", **pid},
            "age": {"type": "int", "lower": 0, "upper": 100, "nullable": False},
            "score": {"type": "float", "lower": 0.0, "upper": 10.0, "nullable": False},
            "region": {"type": "string", "public_keys": ["north", "south", "east", "west"]},
            "city": {"type": "string"}, "note": {"type": "string"}, "income": {"type": "float"}}


def _unique(**table):
    return people_metadata(columns=_columns(unique=True), **table)


def _truncated():
    """The same bound reached the other way: truncated to one row per unit when read."""
    return people_metadata(columns=_columns(), max_rows_per_unit=1)


def _exact(gw: Gateway, sql: str):
    plan, _ = gw._plan(sql)
    width = len(plan.keys.key_names)
    rows = gw.executor.run(plan.bounded_sql).rows
    return plan, {tuple(r[:width]): tuple(r[width:]) for r in rows}


# ---------------------------------------------------------------- metadata


def test_parses_round_trips_and_is_enforced():
    meta = _unique()
    table = meta.table("people")
    assert table.column("pid").unique and table.unit_is_key
    assert table.rows_per_unit == 1 and not table.truncated_at_query_time
    assert enforced_key_columns(meta) == {"people": frozenset({"pid"})}
    again = parse_dataset(dataset_to_dict(meta))
    assert again.table("people").unit_is_key
    # A tighter-looking query-time bound adds no truncation: one row is already the least.
    both = _unique(max_rows_per_unit=3).table("people")
    assert both.rows_per_unit == 1 and not both.truncated_at_query_time


def test_only_the_privacy_unit_can_be_unique():
    columns = _columns()
    columns["city"] = {"type": "string", "unique": True}
    with pytest.raises(MetadataError) as err:
        people_metadata(columns=columns)
    assert err.value.field == "tables.people.columns.city.unique"
    assert "privacy_unit" in str(err.value)


def test_a_unique_unit_must_have_a_key_type():
    columns = _columns()
    columns["pid"] = {"type": "float", "unique": True}
    with pytest.raises(MetadataError) as err:
        people_metadata(columns=columns)
    assert err.value.field == "tables.people.columns.pid.unique"


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_unique_is_a_boolean(value):
    with pytest.raises(MetadataError) as err:
        people_metadata(columns=_columns(unique=value))
    assert err.value.field == "tables.people.columns.pid.unique"


# ---------------------------------------------------------------- load


def test_a_repeated_unit_is_refused_and_the_old_version_kept(tmp_path):
    with Gateway(tmp_path / "h") as gw:
        frame = people_frame(200)
        gw.add_dataset(_unique(), {"people": frame})
        repeated = pd.concat([frame, frame.iloc[[7]]])
        with pytest.raises(DataLoadError) as err:
            gw.add_dataset(_unique(), {"people": repeated}, replace=True)
        message = str(err.value)
        assert "pid" in message and "unique" in message
        assert str(frame.iloc[7]["pid"]) not in message.replace("people", "")
        # the earlier version still answers, from its own rows
        _, vector = _exact(gw, "SELECT COUNT(*) AS n FROM people")
        assert vector == {(): (200,)}


# ---------------------------------------------------------------- planning


SQLS = [
    "SELECT COUNT(*) AS n, SUM(age) AS s FROM people",
    "SELECT region, COUNT(*), SUM(score), AVG(age) FROM people GROUP BY region",
    "SELECT city, COUNT(*) FROM people GROUP BY city",                       # threshold keys
    "SELECT region, COUNT(*) FROM people WHERE age > 50 GROUP BY region",
    "SELECT COUNT(DISTINCT pid) FROM people",
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same rows under a unique unit and under a one-row query-time truncation."""
    home = tmp_path_factory.mktemp("unique")
    frame = people_frame(600)
    unique, truncated = Gateway(home / "u"), Gateway(home / "t")
    unique.add_dataset(_unique(), {"people": frame})
    truncated.add_dataset(_truncated(), {"people": frame})
    yield unique, truncated
    unique.close()
    truncated.close()


@pytest.mark.parametrize("sql", SQLS)
def test_no_truncation_same_answers_and_bounds_as_one_row_per_unit(pair, sql):
    unique, truncated = pair
    plan_u, vector_u = _exact(unique, sql)
    plan_t, vector_t = _exact(truncated, sql)
    assert '"__rank$' in plan_t.bounded_sql  # truncated through the catalog's stored rank
    assert "ROW_NUMBER" not in plan_u.bounded_sql.upper() and '"__rank$' not in plan_u.bounded_sql
    assert "__heavy_units" not in plan_u.bounded_sql
    assert plan_u.direct_path and plan_t.direct_path
    assert vector_u == vector_t
    assert [m.sensitivity for m in plan_u.measures] == [m.sensitivity for m in plan_t.measures]


def test_without_unique_the_table_keeps_its_declared_bounds(tmp_path):
    """The L0 x Linf path of the same table: the declaration is what changes the plan."""
    with Gateway(tmp_path / "h") as gw:
        meta = people_metadata(columns=_columns(), max_groups_per_unit=2, max_rows_per_group=3)
        gw.add_dataset(meta, {"people": people_frame(100)})
        plan, _ = gw._plan("SELECT COUNT(*) AS n FROM people")
        assert not plan.direct_path and plan.measures[0].sensitivity.l1 == 3  # one cell: Linf
    with Gateway(tmp_path / "u") as gw:
        gw.add_dataset(_unique(max_groups_per_unit=2, max_rows_per_group=3),
                       {"people": people_frame(100)})
        plan, _ = gw._plan("SELECT COUNT(*) AS n FROM people")
        assert plan.direct_path and plan.measures[0].sensitivity.l1 == 1


def _shop(customers_unique: bool):
    """bench/tpch's shape: customers one row each (declared, or truncated when read), orders
    truncated to 4 per customer when read, L0 x Linf = 4 so the join takes the direct path."""
    customers = {"privacy_unit": "cid", "max_groups_per_unit": 1, "max_rows_per_group": 4,
                 "columns": {"cid": {"type": "int", "unique": True} if customers_unique else "int",
                             "seg": {"type": "string", "public_keys": ["a", "b"]}}}
    if not customers_unique:
        customers["max_rows_per_unit"] = 1
    return parse_dataset({"dataset": "shop", "budget": {"epsilon": 100.0}, "tables": {
        "customers": customers,
        "orders": {"privacy_unit": "cust", "max_rows_per_unit": 4, "max_groups_per_unit": 1,
                   "max_rows_per_group": 4,
                   "columns": {"okey": "int", "cust": "int",
                               "price": {"type": "float", "lower": 0, "upper": 10}}}}})


def _shop_data():
    customers = pd.DataFrame({"cid": range(50), "seg": ["a", "b"] * 25})
    orders = pd.DataFrame({"okey": range(400), "cust": [i % 50 for i in range(400)],
                           "price": [float(i % 11) for i in range(400)]})
    return {"customers": customers, "orders": orders}


def test_a_join_on_the_unit_truncates_only_the_other_table(tmp_path):
    sql = ("SELECT seg, COUNT(*) AS n, SUM(price) AS revenue FROM customers "
           "JOIN orders ON cid = cust GROUP BY seg")
    found = {}
    for unique in (True, False):
        with Gateway(tmp_path / str(unique)) as gw:
            gw.add_dataset(_shop(unique), _shop_data())
            found[unique] = _exact(gw, sql)
    (plan_u, vector_u), (plan_t, vector_t) = found[True], found[False]
    assert plan_u.direct_path and plan_u.measures[0].sensitivity.l1 == 4
    assert plan_u.bounded_sql.count('"__rank$') == 1  # orders only (stored truncation rank)
    assert plan_t.bounded_sql.count('"__rank$') == 2
    assert vector_u == vector_t
    assert [m.sensitivity for m in plan_u.measures] == [m.sensitivity for m in plan_t.measures]
    assert {k[0]: v[0] for k, v in vector_u.items()} == {"a": 100, "b": 100}  # 4 of 8 orders


def test_the_key_is_proved_again_when_a_saved_catalog_is_read_back(tmp_path, caplog):
    home = tmp_path / "home"
    with Gateway(home) as gw:
        gw.add_dataset(_shop(True), _shop_data())
    saved = home / "catalog" / "shop.json"
    body = json.loads(saved.read_text())
    assert body["unique_columns"]["customers"] == ["cid"]
    del body["unique_columns"]["customers"]
    saved.write_text(json.dumps(body))
    with Gateway(home) as gw:
        assert gw.dataset("shop").tables["customers"].unique_columns == {"cid"}
        gw.executor.connection.execute(
            "INSERT INTO shop.customers SELECT * FROM shop.customers WHERE cid = 3")
    saved.write_text(json.dumps(body))
    with caplog.at_level("WARNING", logger="sqlgate.catalog"), Gateway(home) as gw:
        assert gw.datasets() == []
    message = " ".join(record.getMessage() for record in caplog.records)
    assert "'shop' is not served" in message and "cid" in message
    assert not any(ch.isdigit() for ch in message)


def test_one_row_per_unit_releases_keys_by_the_row_count_under_either_mechanism():
    """With one row per unit a count of units is the row count: no second measure (which
    would split the budget), whatever the mechanism."""
    from rewriter import plan_query
    from sqlgate.catalog import resolve_in
    sql = "SELECT city, COUNT(*) AS n FROM people GROUP BY city"
    for mechanism in ("laplace", "gaussian"):
        doc = dataset_to_dict(_unique())
        doc["query"]["mechanism"] = mechanism
        meta = parse_dataset(doc)
        plan = plan_query(sql, lambda node: resolve_in({meta.name: meta}, node))
        assert plan.direct_path and plan.keys.mode == "threshold"
        assert [m.kind for m in plan.measures] == ["count"], mechanism
        count = plan.measure(plan.keys.threshold_measure)
        assert (count.sensitivity.l0, count.sensitivity.linf) == (1, 1)


def test_rows_in_another_engine_must_prove_the_unit_unique_there(tmp_path):
    """The declaration is never taken on trust: without the engine that holds the rows there
    is nothing to prove it on, and the dataset is refused."""
    from sqlgate.backends import add_external_dataset
    with Gateway(tmp_path / "h") as gw:
        with pytest.raises(DataLoadError) as err:
            add_external_dataset(gw, _unique())
        assert "pid" in str(err.value) and "engine" in str(err.value)
        assert gw.datasets() == []

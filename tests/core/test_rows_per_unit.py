"""`max_rows_per_unit`: a table read through a per-unit truncation to k rows at query time,
then planned like a table truncated at ingest (the direct path).

The bounded SQL is run exactly (the engine is the test seam: `executor.run(plan.bounded_sql)`
has no noise), so the bounds are checked on the numbers the noise is calibrated for."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sqlglot import exp

from rewriter import plan_query
from rewriter.truncation import stored_rank_column, truncated_read
from sqlgate.catalog import resolve_in
from sqlgate.errors import MetadataError
from sqlgate.gateway import Gateway
from sqlgate.metadata import dataset_to_dict, parse_dataset

from tests.core.conftest import REGIONS, people_metadata

K = 3


def _frame(n_units=60, rows=4, seed=7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_units * rows
    return pd.DataFrame({
        "pid": np.repeat(np.arange(n_units), rows),
        "age": rng.integers(0, 90, n),
        "score": rng.uniform(0, 10, n).round(3),
        "region": rng.choice(REGIONS, n),
        "city": rng.choice(["a", "b"], n),
        "note": rng.choice(["x", "y", "z"], n),
        "income": rng.lognormal(10, 1, n),
    })


def _heavy(pid=999, rows=100) -> pd.DataFrame:
    """One unit with many rows, all at the top of the bounds, in every region."""
    return pd.DataFrame({"pid": [pid] * rows, "age": [100] * rows, "score": [10.0] * rows,
                         "region": (REGIONS * rows)[:rows], "city": ["a"] * rows,
                         "note": [f"n{i}" for i in range(rows)], "income": [1.0] * rows})


def _meta(**overrides):
    table = {"max_rows_per_unit": K, "max_groups_per_unit": 2, "max_rows_per_group": 3}
    table.update(overrides)
    table = {k: v for k, v in table.items() if v is not None}
    return people_metadata(**table)


def _plan(sql, meta):
    return plan_query(sql, lambda node: resolve_in({meta.name: meta}, node))


def _exact(gw: Gateway, sql: str, scope=None):
    """The bounded vector of `sql`: {keys: measures}, no noise."""
    plan, _ = gw._plan(sql, scope=scope)
    width = len(plan.keys.key_names)
    return plan, {tuple(r[:width]): tuple(r[width:]) for r in gw.executor.run(plan.bounded_sql).rows}


# ---------------------------------------------------------------- metadata


def test_metadata_parses_validates_and_round_trips():
    meta = _meta()
    table = meta.table("people")
    assert table.max_rows_per_unit == K and table.rows_per_unit == K
    assert table.truncated_at_query_time
    again = parse_dataset(dataset_to_dict(meta))
    assert again.table("people").max_rows_per_unit == K
    # with an ingest truncation: the smaller bound holds, query-time only if tighter
    both = _meta(truncate_rows_per_unit=2).table("people")
    assert both.rows_per_unit == 2 and not both.truncated_at_query_time
    tighter = _meta(truncate_rows_per_unit=10).table("people")
    assert tighter.rows_per_unit == K and tighter.truncated_at_query_time


@pytest.mark.parametrize("value", [0, -3, 1.5, True, "3"])
def test_bad_values_name_the_field(value):
    with pytest.raises(MetadataError) as err:
        _meta(max_rows_per_unit=value)
    assert err.value.field == "tables.people.max_rows_per_unit"


def _two_tables(**child):
    return {"dataset": "shop", "tables": {
        "orders": {"privacy_unit": "cust", "columns": {"okey": "int", "cust": "int"}},
        "lines": {"unit_via": {"column": "okey", "table": "orders", "references": "okey"},
                  "columns": {"okey": "int", "qty": {"type": "int", "lower": 0, "upper": 9}},
                  **child},
        "tags": {"public": True, "columns": {"okey": "int"}}}}


def test_refused_on_tables_without_their_own_unit():
    with pytest.raises(MetadataError) as err:
        parse_dataset(_two_tables(max_rows_per_unit=5))
    assert err.value.field == "tables.lines.max_rows_per_unit"
    assert "unit_via" in str(err.value) and "'orders'" in str(err.value)
    doc = _two_tables()
    doc["tables"]["tags"]["max_rows_per_unit"] = 5
    with pytest.raises(MetadataError) as err:
        parse_dataset(doc)
    assert err.value.field == "tables.tags.max_rows_per_unit"


# ---------------------------------------------------------------- the bound holds


@pytest.fixture
def pair(tmp_path):
    """Two datasets that differ in one unit (999, 100 rows): neighbours."""
    gw = Gateway(tmp_path / "home")
    base = _frame()
    meta = _meta()
    gw.add_dataset(parse_dataset({**dataset_to_dict(meta), "dataset": "d0"}), {"people": base})
    gw.add_dataset(parse_dataset({**dataset_to_dict(meta), "dataset": "d1"}),
                   {"people": pd.concat([base, _heavy()])})
    yield gw
    gw.close()


def _in(sql, name):
    return sql.replace("FROM people", f"FROM {name}.people")


@pytest.mark.parametrize("sql", [
    "SELECT COUNT(*) AS n, SUM(age) AS s FROM people",
    "SELECT region, COUNT(*), SUM(score), AVG(age) FROM people GROUP BY region",
    "SELECT COUNT(DISTINCT pid) FROM people",
    "SELECT city, COUNT(*) FROM people GROUP BY city",                      # threshold keys
    "SELECT region, COUNT(*) FROM people WHERE age > 50 GROUP BY region",
])
def test_a_unit_with_100_rows_moves_every_measure_within_the_sensitivity(pair, sql):
    plans, vectors = [], []
    for name in ("d0", "d1"):
        plan, vector = _exact(pair, _in(sql, name), scope=[name])
        plans.append(plan)
        vectors.append(vector)
    plan = plans[0]
    assert plan.direct_path
    cells = set(vectors[0]) | set(vectors[1])
    for index, measure in enumerate(plan.measures):
        diffs = [abs((vectors[1].get(c) or (0,) * len(plan.measures))[index]
                     - (vectors[0].get(c) or (0,) * len(plan.measures))[index]) for c in cells]
        s = measure.sensitivity
        assert sum(diffs) <= s.l1 and max(diffs) <= s.linf
        assert math.sqrt(sum(d * d for d in diffs)) <= s.l2 + 1e-9
        assert sum(1 for d in diffs if d) <= s.l0
    count = next((m for m in plan.measures if m.kind == "count"), None)
    if count is not None and "WHERE" not in sql:
        # the 100-row unit adds exactly its K kept rows, and the bound is K, not L0 x Linf
        total = [sum(v[plan.measures.index(count)] for v in vec.values()) for vec in vectors]
        assert total[1] - total[0] == K
        assert count.sensitivity.l1 == K


def test_noise_free_count_of_a_heavy_unit_is_k(tmp_path):
    with Gateway(tmp_path / "h") as gw:
        gw.add_dataset(_meta(), {"people": _heavy(pid=1, rows=100)})
        result = gw.query("SELECT COUNT(*) AS n FROM people", analyst="a", epsilon=100.0)
        assert result.rows[0][0] == pytest.approx(K, abs=0.5)


# ---------------------------------------------------------------- which rows are kept


def _kept(gw: Gateway, meta, unit: int) -> list[tuple]:
    table = meta.table("people")
    node = exp.Table(this=exp.to_identifier("people", quoted=True),
                     db=exp.to_identifier(meta.name, quoted=True))
    read = truncated_read(table, node, "p", K)
    sql = exp.select("*").from_(read).where(f'p.pid = {unit}').sql(dialect="duckdb")
    return sorted(gw.executor.run(sql).rows, key=repr)


def test_kept_rows_depend_only_on_the_units_own_rows(tmp_path):
    base = pd.concat([_frame(), _heavy(pid=5, rows=30), _heavy(pid=6, rows=30)])
    # Other units changed: unit 6 loses rows, new units appear, and the physical order is
    # reshuffled (DuckDB's parallel scan and any insertion order must not matter).
    other = pd.concat([base[base.pid != 6], _heavy(pid=6, rows=12).assign(age=50),
                       _heavy(pid=777, rows=50)])
    other = other.sample(frac=1.0, random_state=3)
    with Gateway(tmp_path / "h") as gw:
        metas = []
        for name, frame in (("d0", base), ("d1", other)):
            meta = parse_dataset({**dataset_to_dict(_meta()), "dataset": name})
            gw.add_dataset(meta, {"people": frame})
            metas.append(meta)
        for unit in (5, 0, 17):
            first, second = _kept(gw, metas[0], unit), _kept(gw, metas[1], unit)
            assert first == second
            assert len(first) == min(K, int((base.pid == unit).sum()))
        assert len(_kept(gw, metas[1], 6)) == K and _kept(gw, metas[0], 6) != _kept(gw, metas[1], 6)


def test_query_time_keeps_the_same_rows_as_ingest_truncation(tmp_path):
    frame = pd.concat([_frame(rows=6), _heavy(pid=500, rows=40)])
    sql = "SELECT region, COUNT(*), SUM(age), SUM(score) FROM people WHERE city = 'a' GROUP BY region"
    with Gateway(tmp_path / "h") as gw:
        query_time = parse_dataset({**dataset_to_dict(_meta()), "dataset": "qt"})
        ingest = parse_dataset({**dataset_to_dict(_meta(max_rows_per_unit=None,
                                                        truncate_rows_per_unit=K)),
                                "dataset": "ing"})
        gw.add_dataset(query_time, {"people": frame})
        gw.add_dataset(ingest, {"people": frame})
        plan_qt, at_query = _exact(gw, sql.replace("FROM people", "FROM qt.people"), ["qt"])
        plan_ing, at_ingest = _exact(gw, sql.replace("FROM people", "FROM ing.people"), ["ing"])
        # WHERE runs after the truncation, as on the ingest-truncated table: a unit's kept
        # rows are the same for every query, only then filtered.
        assert at_query == at_ingest
        assert [m.sensitivity for m in plan_qt.measures] == [m.sensitivity for m in plan_ing.measures]
        stored = gw.executor.run('SELECT COUNT(*) FROM "ing"."people"').rows[0][0]
        assert stored == 61 * K                           # ingest really truncated
        assert gw.executor.run('SELECT COUNT(*) FROM "qt"."people"').rows[0][0] == len(frame)


def test_identical_rows_are_truncated_too(tmp_path):
    twins = pd.DataFrame({"pid": [1] * 20, "age": [3] * 20, "score": [1.0] * 20,
                          "region": ["north"] * 20, "city": ["a"] * 20, "note": ["x"] * 20,
                          "income": [1.0] * 20})
    with Gateway(tmp_path / "h") as gw:
        gw.add_dataset(_meta(), {"people": twins})
        _, vector = _exact(gw, "SELECT COUNT(*) FROM people")
        assert vector == {(): (K,)}


# ---------------------------------------------------------------- planning choices


def test_explain_shows_the_bound_and_spends_nothing(tmp_path):
    with Gateway(tmp_path / "h") as gw:
        gw.add_dataset(_meta(), {"people": _frame()})
        ex = gw.explain("SELECT region, COUNT(*) FROM people GROUP BY region", analyst="a")
        # The catalog stored the truncation rank: the read is a filter on it.
        assert f'"{stored_rank_column(gw.dataset("town").table("people"))}" <= {K}' \
            in ex.rewritten_sql
        assert f"<= {K}" in ex.rewritten_sql and "per_unit" not in ex.rewritten_sql
        assert any(f"at most {K} rows of people" in n for n in ex.notes)
        assert any("bounded at query time" in n for n in ex.notes)
        assert gw.budget("a", "town").queries == 0


def test_sensitivity_chooses_between_k_and_l0_linf_from_metadata():
    sql_total = "SELECT COUNT(*) FROM people"
    sql_regions = "SELECT region, COUNT(*) FROM people GROUP BY region"   # 4 public cells
    # k = Linf: a tie, the direct path (it drops no rows beyond k)
    assert _plan(sql_total, _meta(max_rows_per_group=K)).direct_path
    # k = 5 > Linf = 3 without GROUP BY: per-unit stages (L1 3 < 5), still over the truncation
    per_unit = _plan(sql_total, _meta(max_rows_per_unit=5))
    assert not per_unit.direct_path and per_unit.measures[0].sensitivity.l1 == 3
    assert "per_unit" in per_unit.bounded_sql and "<= 5" in per_unit.bounded_sql
    assert any("at most 5 rows of people" in n for n in per_unit.notes)
    # groups: per-unit L1 = min(L0, cells) x Linf = 2 x 3 = 6 >= 5: direct
    assert _plan(sql_regions, _meta(max_rows_per_unit=5)).direct_path
    assert not _plan(sql_regions, _meta(max_rows_per_unit=7)).direct_path
    # two public cells (a CASE bin) cap the per-unit groups: 2 x 2 = 4 < 5
    bins = ("SELECT CASE WHEN age < 50 THEN 'young' ELSE 'old' END AS b, COUNT(*) "
            "FROM people GROUP BY 1")
    assert not _plan(bins, _meta(max_rows_per_unit=5, max_groups_per_unit=4,
                                 max_rows_per_group=2)).direct_path
    # Gaussian datasets compare L2: sqrt(2) x 3 = 4.2 < 5
    gaussian = dataset_to_dict(_meta(max_rows_per_unit=5))
    gaussian["query"]["mechanism"] = "gaussian"
    assert not _plan(sql_regions, parse_dataset(gaussian)).direct_path
    gaussian["tables"]["people"]["max_rows_per_unit"] = 4
    assert _plan(sql_regions, parse_dataset(gaussian)).direct_path


def test_quantiles_and_threshold_keys_use_k():
    meta = _meta(max_rows_per_group=K)
    median = _plan("SELECT MEDIAN(age) FROM people", meta)
    assert median.direct_path and median.quantiles[0].rows_per_unit == K
    assert "ROW_NUMBER() OVER (PARTITION BY \"pid\"" in median.quantile_sql
    # Laplace: the row count itself decides the keys (l0 = linf = k), no units count added
    threshold = _plan("SELECT city, COUNT(*) FROM people GROUP BY city", meta)
    assert threshold.direct_path and threshold.keys.mode == "threshold"
    count = threshold.measure(threshold.keys.threshold_measure)
    assert [m.kind for m in threshold.measures] == ["count"]
    assert count.sensitivity.l0 == K and count.sensitivity.linf == K
    # no count in the query: a units count is added (l0 = k, linf = 1)
    summed = _plan("SELECT city, SUM(age) FROM people GROUP BY city", meta)
    units = summed.measure(summed.keys.threshold_measure)
    assert units.kind == "units" and units.sensitivity.l0 == K and units.sensitivity.linf == 1
    distinct = _plan("SELECT COUNT(DISTINCT pid) FROM people", meta)
    assert distinct.direct_path and distinct.measures[0].sensitivity.l1 == 1


def test_ingest_truncation_at_least_as_tight_needs_no_query_time_truncation():
    p = _plan("SELECT COUNT(*) FROM people", _meta(truncate_rows_per_unit=2))
    assert p.direct_path and "ROW_NUMBER" not in p.bounded_sql
    assert p.measures[0].sensitivity.l1 == 2
    assert any("bounded at ingest" in n for n in p.notes)


# ---------------------------------------------------------------- joins


def _shop(**orders_bounds):
    orders = {"privacy_unit": "cust", "max_groups_per_unit": 2, "max_rows_per_group": 4,
              "max_rows_per_unit": 4,
              "columns": {"okey": "int", "cust": "int",
                          "prio": {"type": "string", "public_keys": ["hi", "lo"]},
                          "price": {"type": "float", "lower": 0, "upper": 10, "nullable": False}}}
    orders.update(orders_bounds)
    return parse_dataset({
        "dataset": "shop", "budget": {"epsilon": 1e6, "delta": 1e-3},
        "tables": {
            "customer": {"privacy_unit": "ckey", "max_rows_per_unit": 1,
                         "columns": {"ckey": "int",
                                     "seg": {"type": "string", "public_keys": ["s1", "s2"]}}},
            "orders": orders,
            "lines": {"unit_via": {"column": "okey", "table": "orders", "references": "okey"},
                      "max_groups_per_unit": 2, "max_rows_per_group": 200,
                      "columns": {"okey": "int",
                                  "flag": {"type": "string", "public_keys": ["A", "B"]}}},
            "kinds": {"public": True, "columns": {"prio": "string", "label": "string"}}}})


def _shop_frames(heavy: bool):
    customer = pd.DataFrame({"ckey": np.arange(50), "seg": ["s1", "s2"] * 25})
    cust = np.repeat(np.arange(50), 3)
    orders = pd.DataFrame({"okey": np.arange(len(cust)), "cust": cust,
                           "prio": ["hi", "lo", "lo"] * 50, "price": 5.0})
    if heavy:  # a neighbour: one more customer, with 33 orders of 5 lines each
        customer = pd.concat([customer, pd.DataFrame({"ckey": [999], "seg": ["s1"]})])
        extra = pd.DataFrame({"okey": np.arange(1000, 1033), "cust": 999,
                              "prio": ["hi", "lo", "lo"] * 11, "price": 10.0})
        orders = pd.concat([orders, extra])
    lines = pd.DataFrame({"okey": np.repeat(orders.okey.to_numpy(), 5), "flag": "A"})
    kinds = pd.DataFrame({"prio": ["hi", "hi", "lo"], "label": ["x", "y", "z"]})
    return {"customer": customer, "orders": orders, "lines": lines, "kinds": kinds}


@pytest.fixture
def shops(tmp_path):
    gw = Gateway(tmp_path / "shop")
    for name, heavy in (("s0", False), ("s1", True)):
        meta = parse_dataset({**dataset_to_dict(_shop()), "dataset": name})
        gw.add_dataset(meta, _shop_frames(heavy))
    yield gw
    gw.close()


@pytest.mark.parametrize("sql,direct", [
    # unit join of two truncated tables: a unit has at most 1 x 4 joined rows
    ("SELECT seg, COUNT(*), SUM(price) FROM customer JOIN orders ON ckey = cust GROUP BY seg", True),
    # FK path: the parent is read truncated, its lines follow; bounded per unit (L0 x Linf)
    ("SELECT flag, COUNT(*) FROM lines JOIN orders ON lines.okey = orders.okey GROUP BY flag", False),
    # a public table may repeat rows ('hi' twice): bounded per unit after the join
    ("SELECT label, COUNT(*) FROM orders JOIN kinds ON orders.prio = kinds.prio GROUP BY label", False),
])
def test_joins_stay_within_their_sensitivity(shops, sql, direct):
    vectors = []
    for name in ("s0", "s1"):
        scoped = (sql.replace("FROM customer", f"FROM {name}.customer")
                  .replace("FROM lines", f"FROM {name}.lines")
                  .replace("FROM orders", f"FROM {name}.orders")
                  .replace("JOIN orders", f"JOIN {name}.orders")
                  .replace("JOIN kinds", f"JOIN {name}.kinds"))
        plan, vector = _exact(shops, scoped, scope=[name])
        vectors.append(vector)
        assert plan.direct_path is direct
        orders = shops.dataset(name).table("orders")
        assert plan.bounded_sql.count(f'"{stored_rank_column(orders)}" <= 4') == 1
    for index, measure in enumerate(plan.measures):
        diffs = [abs((vectors[1].get(c) or (0,) * 9)[index] - (vectors[0].get(c) or (0,) * 9)[index])
                 for c in set(vectors[0]) | set(vectors[1])]
        assert 0 < sum(diffs) <= measure.sensitivity.l1
        assert max(diffs) <= measure.sensitivity.linf
    if direct:
        assert plan.measures[0].sensitivity.l1 == 1 * 4


def test_fk_path_lines_of_dropped_orders_are_dropped_too(shops):
    _, vector = _exact(shops, "SELECT COUNT(*) FROM s1.lines JOIN s1.orders "
                              "ON lines.okey = orders.okey WHERE cust = 999", scope=["s1"])
    # customer 999 keeps 4 of its 33 orders: their 5 lines each (165 without the truncation)
    assert vector == {(): (20,)}
    _, vector = _exact(shops, "SELECT flag, COUNT(*) FROM s1.lines JOIN s1.orders "
                              "ON lines.okey = orders.okey WHERE cust = 1 GROUP BY flag",
                       scope=["s1"])
    assert vector[("A",)] == (15,)                    # 3 orders x 5 lines, nothing dropped


def test_a_row_count_releases_keys_with_a_lower_threshold_than_an_added_units_count():
    """Laplace, direct path: COUNT(*) alone decides the keys (its scale k/eps), where an added
    units count would split the budget (each 2k/eps) for a threshold about twice as high.
    Gaussian calibrates on L2, where the units count (sqrt(k)) stays the better choice."""
    from sqlgate import release
    sql = "SELECT city, COUNT(*) FROM people GROUP BY city"
    meta = _meta(max_rows_per_group=K)
    plan = _plan(sql, meta)
    release_plan = release.calibrate(plan, epsilon=1.0, delta=1e-6, mechanism="laplace",
                                     rho_for_epsilon=None)
    assert release_plan.noise[plan.measures[0].name].scale == pytest.approx(K)
    units_alternative = release._search_threshold("laplace", (K, K, 1), 2.0 * K, 1e-6)
    assert release_plan.threshold.threshold < 0.7 * units_alternative.threshold
    assert release_plan.threshold.delta <= 1e-6
    gaussian = dataset_to_dict(meta)
    gaussian["query"]["mechanism"] = "gaussian"
    plan = _plan(sql, parse_dataset(gaussian))
    assert plan.measure(plan.keys.threshold_measure).kind == "units"

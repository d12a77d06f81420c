"""The performance changes behind the benchmark keep their contracts: the plan cache never
serves a stale or out-of-scope plan, public key sets filtered late still release exactly
the public cells with the same sensitivity, the shared watchdog still enforces timeouts and
cancels, and quantiles accept the read-only arrays pandas hands out."""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from sqlgate.errors import QueryCanceled, UndefinedTable, UnsupportedQuery
from sqlgate.gateway import Gateway
from sqlgate.metadata import parse_dataset

BIG = 50.0  # epsilon for near-exact answers


def _meta(name="shop", truncate=None, groups=2, rows=3):
    table = {"privacy_unit": "uid", "max_groups_per_unit": groups, "max_rows_per_group": rows,
             "columns": {"uid": "int",
                         "colour": {"type": "string", "public_keys": ["red", "blue"]},
                         "price": {"type": "float", "lower": 0, "upper": 100,
                                   "nullable": False}}}
    if truncate:
        table["truncate_rows_per_unit"] = truncate
    return parse_dataset({"dataset": name, "budget": {"epsilon": 1e6, "delta": 1e-3},
                          "query": {"epsilon": 1.0, "delta": 1e-7}, "tables": {"sales": table}})


def _frame(n_units=300, seed=3):
    rng = np.random.default_rng(seed)
    uid = np.repeat(np.arange(n_units), 2)
    # a third of the rows have a colour outside the public key set
    colour = rng.choice(["red", "blue", "green"], len(uid))
    return pd.DataFrame({"uid": uid, "colour": colour, "price": rng.uniform(0, 100, len(uid))})


@pytest.fixture
def gw(tmp_path):
    gateway = Gateway(tmp_path / "home")
    gateway.add_dataset(_meta(), {"sales": _frame()})
    yield gateway
    gateway.close()


SQL = "SELECT colour, COUNT(*) AS n FROM sales GROUP BY colour"


def test_plan_cache_reuses_plans_and_forgets_them_when_the_dataset_changes(gw):
    first, _ = gw._plan(SQL)
    assert gw._plan(SQL)[0] is first                        # same text: planned once
    assert gw._plan(SQL.lower())[0] is not first            # other text: planned again
    gw.add_dataset(_meta(groups=1, rows=1), {"sales": _frame()}, replace=True)
    replanned, _ = gw._plan(SQL)
    assert replanned is not first                           # new catalog version
    assert replanned.measures[0].sensitivity.l1 == 1        # and the new metadata's bounds
    assert first.measures[0].sensitivity.l1 == 2 * 3


def test_plan_cache_keeps_scopes_apart_and_never_caches_errors(gw):
    gw._plan(SQL, scope=["shop"])
    with pytest.raises(UndefinedTable):
        gw._plan(SQL, scope=["other"])                      # cached plan not used out of scope
    for _ in range(2):
        with pytest.raises(UnsupportedQuery):
            gw.query("SELECT colour, COUNT(*) FROM sales GROUP BY ROLLUP(colour)", analyst="a")
    assert gw.budget("a", "shop").queries == 0


def test_repeated_queries_are_charged_each_time_for_new_analysts(gw):
    for i in range(3):
        result = gw.query(SQL, analyst=f"a{i}", epsilon=BIG)
        assert not result.cached
        assert gw.budget(f"a{i}", "shop").queries == 1
    assert gw.query(SQL, analyst="a0", epsilon=BIG).cached   # the answer cache still works


@pytest.mark.parametrize("truncate", [None, 2])
def test_public_keys_filtered_late_release_exactly_the_public_cells(tmp_path, truncate):
    frame = _frame()
    with Gateway(tmp_path / "h") as gateway:
        gateway.add_dataset(_meta(truncate=truncate), {"sales": frame})
        plan, _ = gateway._plan(SQL)
        assert plan.direct_path is bool(truncate)
        # No key test in SQL at all (per row or HAVING): the release reads the public cells.
        assert "HAVING" not in plan.bounded_sql and " IN (" not in plan.bounded_sql
        assert "green" in {row[0] for row in gateway.executor.run(plan.bounded_sql).rows}
        result = gateway.query(SQL, analyst="x", epsilon=BIG)
    got = dict(result.rows)
    assert set(got) == {"red", "blue"}                      # never 'green'
    truth = frame.groupby("colour").size()
    for colour in ("red", "blue"):
        assert got[colour] == pytest.approx(truth[colour], abs=3)


def test_keys_are_filtered_before_the_l0_window_when_a_unit_has_fewer_slots_than_keys(tmp_path):
    # One group per unit but two public keys: the window must not spend the slot on 'green'.
    with Gateway(tmp_path / "h") as gateway:
        gateway.add_dataset(_meta(groups=1, rows=3), {"sales": _frame()})
        plan, _ = gateway._plan(SQL)
        src = plan.bounded_sql.split("per_unit AS")[0]
        assert "IN ('red', 'blue')" in src and "HAVING" not in plan.bounded_sql
        assert plan.measures[0].sensitivity.l0 == 1


def test_watchdog_enforces_timeout_and_cancel(gw):
    slow = "SELECT COUNT(*) FROM range(100000000000) AS t(a)"
    with pytest.raises(QueryCanceled, match="timeout"):
        gw.executor.run(slow, timeout_s=0.2)
    cancel = threading.Event()
    timer = threading.Timer(0.2, cancel.set)
    timer.start()
    with pytest.raises(QueryCanceled, match="cancelled"):
        gw.executor.run(slow, timeout_s=30, cancel=cancel)
    assert gw.executor.run("SELECT 41 + 1").rows == [(42,)]


def test_quantiles_accept_read_only_arrays(gw):
    from sqlgate import release

    plan, _ = gw._plan("SELECT MEDIAN(price) AS m FROM sales")
    spec = gw._calibrate(plan, gw.dataset("shop"), BIG).quantiles[plan.quantiles[0].name]
    values = pd.Series(np.linspace(30.0, 50.0, 501)).to_numpy()  # median 40
    values.setflags(write=False)
    got = release.noisy_quantiles(plan.quantiles[0], spec, [values, np.empty(0)])
    assert got[0] == pytest.approx(40.0, abs=1.0) and len(got) == 2


# ---------------------------------------------------------------- ingest-bounded joins

def _clinic(name, truncate_people=1, truncate_visits=3):
    return parse_dataset({
        "dataset": name, "budget": {"epsilon": 1e6, "delta": 1e-3},
        "query": {"epsilon": 1.0, "delta": 1e-7},
        "tables": {
            "people": {"privacy_unit": "pid", "truncate_rows_per_unit": truncate_people,
                       "columns": {"pid": "int",
                                   "sex": {"type": "string", "public_keys": ["f", "m"]}}},
            "visits": {"privacy_unit": "pid", "truncate_rows_per_unit": truncate_visits,
                       "max_groups_per_unit": 2, "max_rows_per_group": 3,
                       "columns": {"pid": "int",
                                   "ward": {"type": "string", "public_keys": ["a", "b", "c"]},
                                   "cost": {"type": "float", "lower": 0, "upper": 10,
                                            "nullable": False}}},
            "wards": {"public": True, "columns": {"ward": "string",
                                                 "floor": {"type": "int", "public_keys": [1, 2]}}},
        }})


def _clinic_frames(adversary: bool, seed=5):
    rng = np.random.default_rng(seed)
    people = pd.DataFrame({"pid": np.arange(200), "sex": rng.choice(["f", "m"], 200)})
    pid = np.repeat(np.arange(200), 4)
    visits = pd.DataFrame({"pid": pid, "ward": rng.choice(["a", "b", "c"], len(pid)),
                           "cost": rng.uniform(0, 10, len(pid)).round(2)})
    if adversary:  # one more person with 60 visits everywhere, all at the top of the bounds
        people = pd.concat([people, pd.DataFrame({"pid": [999], "sex": ["f"]})])
        visits = pd.concat([visits, pd.DataFrame({"pid": [999] * 60, "ward": ["a", "b", "c"] * 20,
                                                  "cost": [50.0] * 60})])
    wards = pd.DataFrame({"ward": ["a", "b", "c", "c"], "floor": [1, 1, 2, 2]})
    return {"people": people, "visits": visits, "wards": wards}


JOIN = ("SELECT v.ward, COUNT(*) AS n, SUM(v.cost) AS total FROM people p "
        "JOIN visits v ON p.pid = v.pid GROUP BY v.ward")


def test_unit_join_of_truncated_tables_takes_the_direct_path_within_its_sensitivity(tmp_path):
    with Gateway(tmp_path / "h") as gateway:
        gateway.add_dataset(_clinic("n0"), _clinic_frames(False))
        gateway.add_dataset(_clinic("n1"), _clinic_frames(True))
        vectors = []
        for name in ("n0", "n1"):
            sql = JOIN.replace("people p", f"{name}.people p").replace("visits v", f"{name}.visits v")
            plan, _ = gateway._plan(sql, scope=[name])
            assert plan.direct_path  # 1 x 3 joined rows per person <= 2 groups x 3 rows
            keys = len(plan.keys.key_names)
            vectors.append({tuple(r[:keys]): r[keys:]
                            for r in gateway.executor.run(plan.bounded_sql).rows})
        for index, measure in enumerate(plan.measures):
            assert measure.sensitivity.l1 == 3 * (1 if measure.kind == "count" else 10 * 2**measure.fixed_point_bits)
            diffs = [abs(vectors[1].get(c, (0, 0))[index] - vectors[0].get(c, (0, 0))[index])
                     for c in set(vectors[0]) | set(vectors[1])]
            assert sum(diffs) <= measure.sensitivity.l1
            assert max(diffs) <= measure.sensitivity.linf
            assert sum(diffs) > 0  # the adversary is visible, only bounded


@pytest.mark.parametrize("sql,truncate_visits", [
    # a public table can repeat a person's rows (ward 'c' appears twice in wards)
    ("SELECT w.floor, COUNT(*) FROM people p JOIN visits v ON p.pid = v.pid "
     "JOIN wards w ON v.ward = w.ward GROUP BY w.floor", 3),
    # a self-join multiplies rows: 3 x 3 = 9 > 2 groups x 3 rows
    ("SELECT a.ward, COUNT(*) FROM visits a JOIN visits b ON a.pid = b.pid GROUP BY a.ward", 3),
    # one of the joined tables was not truncated at ingest
    ("SELECT v.ward, COUNT(*) FROM people p JOIN visits v ON p.pid = v.pid GROUP BY v.ward", None),
])
def test_joins_without_a_product_bound_keep_per_unit_bounding(tmp_path, sql, truncate_visits):
    with Gateway(tmp_path / "h") as gateway:
        gateway.add_dataset(_clinic("n0", truncate_visits=truncate_visits), _clinic_frames(False))
        plan, _ = gateway._plan(sql)
        assert not plan.direct_path
        assert "per_unit" in plan.bounded_sql

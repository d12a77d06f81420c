"""`truncate_rows_per_unit` on a table that reaches its unit through `unit_via` (issue 7).

The child (lines -> orders.okey) is stored with at most K lines per unit of the parent row
each line joins; the parent key is an enforced invariant (the load is refused unless it is
distinct), so lines JOIN orders ON the key has at most K rows per unit and plans the direct
path. The bounded SQL is run exactly (the engine is the noise-free seam), so bounds are
checked on the numbers the noise is calibrated for."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from rewriter import plan_query
from sqlgate.catalog import resolve_in
from sqlgate.errors import DataLoadError, MetadataError, PolicyRefused
from sqlgate.gateway import Gateway
from sqlgate.metadata import dataset_to_dict, enforced_key_columns, parse_dataset

K = 5          # lines kept per customer
K_ORDERS = 4   # orders kept per customer
QTY_MAX = 9
FLAGS = ["A", "N", "R"]
JOIN = "FROM lines JOIN orders ON lines.okey = orders.okey"


def _doc(name="shop", *, truncate_lines=K, okey_type="int"):
    lines = {"unit_via": {"column": "okey", "table": "orders", "references": "okey"},
             "max_groups_per_unit": 3, "max_rows_per_group": 20,
             "columns": {"okey": "int", "lno": "int",
                         "qty": {"type": "int", "lower": 0, "upper": QTY_MAX, "nullable": False},
                         "flag": {"type": "string", "public_keys": FLAGS}}}
    if truncate_lines is not None:
        lines["truncate_rows_per_unit"] = truncate_lines
    return {"dataset": name, "budget": {"epsilon": 1e6, "delta": 1e-3},
            "query": {"epsilon": 1.0, "delta": 1e-7},
            "tables": {
                "customers": {"privacy_unit": "cid", "truncate_rows_per_unit": 1,
                              "columns": {"cid": "int", "seg": {"type": "string",
                                                                "public_keys": ["x", "y"]}}},
                "orders": {"privacy_unit": "cust", "truncate_rows_per_unit": K_ORDERS,
                           "max_groups_per_unit": 2, "max_rows_per_group": 4,
                           "columns": {"okey": okey_type, "cust": "int",
                                       "prio": {"type": "string", "public_keys": ["1", "2"]}}},
                "lines": lines,
                "tags": {"public": True, "columns": {"flag": "string", "label": "string"}},
            }}


def _meta(name="shop", **kw):
    return parse_dataset(_doc(name, **kw))


def _data(n_customers=40, seed=5, heavy=None):
    """Customers 0..n-1 with 0..6 orders of 1..7 lines, plus orphan lines (no such order)."""
    rng = np.random.default_rng(seed)
    orders, lines = [], []
    okey = 1000
    for cust in range(n_customers):
        for _ in range(int(rng.integers(0, 7))):
            okey += 1
            orders.append((okey, cust, str(rng.integers(1, 3))))
            for lno in range(int(rng.integers(1, 8))):
                lines.append((okey, lno, int(rng.integers(0, QTY_MAX + 1)), str(rng.choice(FLAGS))))
    lines += [(1, 0, 3, "A"), (2, 1, 4, "N")]  # orphans: no order 1 or 2
    frames = {"customers": pd.DataFrame({"cid": range(n_customers),
                                         "seg": ["x", "y"] * (n_customers // 2)}),
              "orders": pd.DataFrame(orders, columns=["okey", "cust", "prio"]),
              "lines": pd.DataFrame(lines, columns=["okey", "lno", "qty", "flag"]),
              "tags": pd.DataFrame({"flag": FLAGS, "label": ["a", "n", "r"]})}
    if heavy is not None:
        frames = _with_heavy(frames, heavy)
    return frames


def _with_heavy(frames, cust, n_orders=6, n_lines=7):
    """One more customer with many orders and lines, every line at the top of the bounds."""
    frames = dict(frames)
    okeys = [900_000 + 10 * cust + i for i in range(n_orders)]
    frames["customers"] = pd.concat([frames["customers"],
                                     pd.DataFrame({"cid": [cust], "seg": ["x"]})])
    frames["orders"] = pd.concat([frames["orders"], pd.DataFrame(
        {"okey": okeys, "cust": cust, "prio": "1"})])
    frames["lines"] = pd.concat([frames["lines"], pd.DataFrame(
        [(o, lno, QTY_MAX, FLAGS[lno % 3]) for o in okeys for lno in range(n_lines)],
        columns=["okey", "lno", "qty", "flag"])])
    return frames


def _rows(gw, sql):
    return gw.executor.run(sql).rows


def _stored_lines_per_unit(gw, name="shop"):
    return dict(_rows(gw, f'SELECT o.cust, COUNT(*) FROM "{name}".lines l '
                          f'JOIN "{name}".orders o ON l.okey = o.okey GROUP BY o.cust'))


def _exact(gw, sql, scope=None):
    plan, _ = gw._plan(sql, scope=scope)
    width = len(plan.keys.key_names)
    return plan, {tuple(r[:width]): tuple(r[width:]) for r in gw.executor.run(plan.bounded_sql).rows}


@pytest.fixture
def gw(tmp_path):
    gateway = Gateway(tmp_path / "home")
    gateway.add_dataset(_meta(), _data())
    yield gateway
    gateway.close()


# ---------------------------------------------------------------- metadata


def test_metadata_bounds_and_key_requirements():
    meta = _meta()
    assert meta.table("lines").rows_per_unit == K
    assert enforced_key_columns(meta) == {"orders": frozenset({"okey"})}
    assert enforced_key_columns(_meta(truncate_lines=None)) == {"orders": frozenset({"okey"})}
    assert parse_dataset(dataset_to_dict(meta)).table("lines").truncate_rows_per_unit == K
    # the referenced key must be of a type whose `=` is identity, and of the child's type
    with pytest.raises(MetadataError) as err:
        _meta(okey_type="float")
    assert err.value.field == "tables.lines.truncate_rows_per_unit"
    assert "orders.okey" in str(err.value) and "float" in str(err.value)
    with pytest.raises(MetadataError) as err:
        _meta(okey_type="string")
    assert "same type" in str(err.value)
    _meta(okey_type="string", truncate_lines=None)  # no truncation: no key needed, as before


# ---------------------------------------------------------------- loading


def _expected_lines_per_unit(gw, frames, name="shop"):
    """min(K, lines of the orders the customer kept): nothing else is dropped."""
    kept = dict(_rows(gw, f'SELECT okey, cust FROM "{name}".orders'))
    per = {}
    for okey in frames["lines"]["okey"]:
        if okey in kept:
            per[kept[okey]] = per.get(kept[okey], 0) + 1
    return {cust: min(K, n) for cust, n in per.items()}


def test_stored_child_has_at_most_k_rows_per_unit_and_no_orphans(tmp_path):
    frames = _data(heavy=77)
    with Gateway(tmp_path / "h") as gw:
        gw.add_dataset(_meta(), frames)
        per_unit = _stored_lines_per_unit(gw)
        assert max(per_unit.values()) == K           # truncated (several customers exceed K)
        assert per_unit[77] == K
        assert per_unit == _expected_lines_per_unit(gw, frames)
        # orphans (orders 1, 2) and lines of orders truncated away are gone
        stored = _rows(gw, 'SELECT COUNT(*), COUNT(o.okey) FROM shop.lines l '
                           'LEFT JOIN shop.orders o ON l.okey = o.okey')[0]
        assert stored[0] == stored[1] == sum(per_unit.values())
        assert max(dict(_rows(gw, "SELECT cust, COUNT(*) FROM shop.orders GROUP BY cust")
                        ).values()) == K_ORDERS
        # the enforced key is recorded on the private parent, from the metadata's demand only
        tables = gw.dataset("shop").tables
        assert tables["orders"].unique_columns == {"okey"}
        assert tables["customers"].unique_columns == frozenset()
        assert tables["tags"].unique_columns == {"flag", "label"}


def test_without_truncation_the_child_is_stored_whole(tmp_path):
    frames = _data()
    with Gateway(tmp_path / "h") as gw:
        gw.add_dataset(_meta(truncate_lines=None), frames)
        assert _rows(gw, "SELECT COUNT(*) FROM shop.lines")[0][0] == len(frames["lines"])
        # The key is enforced for every unit_via parent, truncated child or not.
        assert gw.dataset("shop").tables["orders"].unique_columns == frozenset({"okey"})


def test_truncation_of_a_unit_is_stable_when_other_units_change(tmp_path):
    base = _data(heavy=77)
    other = _with_heavy(dict(base), 88)                      # a new heavy unit
    other["lines"] = other["lines"][other["lines"]["okey"] % 3 != 0]  # other units lose lines
    keep = {int(o) for o in base["orders"][base["orders"]["cust"] == 77]["okey"]}
    other["lines"] = pd.concat([other["lines"], base["lines"][base["lines"]["okey"].isin(keep)]]
                               ).drop_duplicates().sample(frac=1.0, random_state=1)
    with Gateway(tmp_path / "h") as gw:
        gw.add_dataset(_meta("d0"), base)
        gw.add_dataset(_meta("d1"), other)
        unit = ('SELECT l.okey, l.lno, l.qty, l.flag FROM "{}".lines l JOIN "{}".orders o '
                'ON l.okey = o.okey WHERE o.cust = 77 ORDER BY ALL')
        first, second = _rows(gw, unit.format("d0", "d0")), _rows(gw, unit.format("d1", "d1"))
        assert len(first) == K and first == second
        assert _stored_lines_per_unit(gw, "d1") != _stored_lines_per_unit(gw, "d0")


def test_duplicated_parent_key_refuses_the_load_and_keeps_the_old_version(tmp_path):
    frames = _data()
    dup = dict(frames)
    # another customer's order repeats a key: a line of that order would join two units
    dup["orders"] = pd.concat([frames["orders"], frames["orders"].head(1).assign(cust=5)])
    with Gateway(tmp_path / "h") as gw:
        with pytest.raises(DataLoadError) as err:
            gw.add_dataset(_meta(), dup)
        message = str(err.value)
        assert "'orders'" in message and "okey" in message and "unit_via" in message
        assert str(int(frames["orders"]["okey"].iloc[0])) not in message  # no values
        assert gw.datasets() == []
        gw.add_dataset(_meta(), frames)
        before = gw.catalog.entry("shop")
        answer = gw.query(f"SELECT COUNT(*) {JOIN}", analyst="a", epsilon=100.0).rows[0][0]
        with pytest.raises(DataLoadError):
            gw.add_dataset(_meta(), dup, replace=True)
        assert gw.catalog.entry("shop") == before       # the old version is still served
        assert gw.dataset("shop").tables["orders"].unique_columns == {"okey"}
        again = gw.query(f"SELECT COUNT(*) {JOIN}", analyst="b", epsilon=100.0).rows[0][0]
        assert again == pytest.approx(answer, abs=5)
        assert _stored_lines_per_unit(gw) == _expected_lines_per_unit(gw, frames)
    # without truncation too: a line of that order would still belong to two people
    with Gateway(tmp_path / "h2") as gw:
        with pytest.raises(DataLoadError):
            gw.add_dataset(_meta(truncate_lines=None), dup)
        # NULL keys join nothing and are never a problem
        nulls = dict(frames)
        nulls["orders"] = pd.concat([frames["orders"],
                                     frames["orders"].head(2).assign(okey=None, cust=5)])
        gw.add_dataset(_meta(truncate_lines=None), nulls)


def test_the_recorded_key_survives_a_restart_and_is_never_forged(tmp_path):
    home = tmp_path / "home"
    with Gateway(home) as gw:
        gw.add_dataset(_meta(), _data())
    saved = home / "catalog" / "shop.json"
    body = json.loads(saved.read_text())
    assert body["unique_columns"]["orders"] == ["okey"]
    # a key the metadata does not demand is dropped when the catalog is read back
    body["unique_columns"]["orders"] = ["okey", "cust"]
    body["unique_columns"]["customers"] = ["cid"]
    saved.write_text(json.dumps(body))
    with Gateway(home) as gw:
        tables = gw.dataset("shop").tables
        assert tables["orders"].unique_columns == {"okey"}
        assert tables["customers"].unique_columns == frozenset()
        assert gw._plan(f"SELECT COUNT(*) {JOIN}")[0].direct_path


def test_a_dataset_saved_without_its_key_is_proved_again_or_not_served(tmp_path, caplog):
    """Datasets stored before every unit_via key was enforced have no recorded key: it is
    proved on the stored table when the catalog is read back, and a repeated key keeps the
    dataset out of service (logged, no values) rather than served with broken bounds."""
    home = tmp_path / "home"
    with Gateway(home) as gw:
        gw.add_dataset(_meta(truncate_lines=None), _data())
    saved = home / "catalog" / "shop.json"
    body = json.loads(saved.read_text())
    del body["unique_columns"]["orders"]
    saved.write_text(json.dumps(body))
    with Gateway(home) as gw:
        assert gw.dataset("shop").tables["orders"].unique_columns == {"okey"}
        conn = gw.executor.connection
        first = conn.execute("SELECT okey FROM shop.orders ORDER BY okey LIMIT 1").fetchone()[0]
        conn.execute("INSERT INTO shop.orders SELECT * REPLACE (5 AS cust) FROM shop.orders "
                     "WHERE okey = ?", [first])
    saved.write_text(json.dumps(body))
    with caplog.at_level("WARNING", logger="sqlgate.catalog"), Gateway(home) as gw:
        assert gw.datasets() == []
    message = " ".join(record.getMessage() for record in caplog.records)
    assert "'shop' is not served" in message and "okey" in message
    assert not any(ch.isdigit() for ch in message)  # no key values


def test_loader_rows_match_without_an_engine():
    """dataset_rows alone (also used by Spark): truncated, orphans dropped, duplicates refused."""
    frames = _data()
    from sqlgate.backends.loading import dataset_rows

    rows = dataset_rows(_meta(), frames)
    kept_orders = {r[0] for r in rows["orders"]}
    assert {r[0] for r in rows["lines"]} <= kept_orders
    dup = dict(frames)
    dup["orders"] = pd.concat([frames["orders"], frames["orders"].head(2)])
    with pytest.raises(DataLoadError):
        dataset_rows(_meta(), dup)


# ---------------------------------------------------------------- planning and the bound


@pytest.fixture
def neighbours(tmp_path):
    """d0, and d1 = d0 plus one customer with 6 orders of 7 lines each."""
    with Gateway(tmp_path / "n") as gw:
        gw.add_dataset(_meta("d0"), _data())
        gw.add_dataset(_meta("d1"), _data(heavy=999))
        yield gw


@pytest.mark.parametrize("sql", [
    f"SELECT COUNT(*) AS n, SUM(qty) AS s {JOIN}",
    f"SELECT flag, COUNT(*), SUM(qty), AVG(qty) {JOIN} GROUP BY flag",
    f"SELECT prio, COUNT(*) FROM orders JOIN lines ON orders.okey = lines.okey "
    f"WHERE qty > 2 GROUP BY prio",
    f"SELECT label, COUNT(*) {JOIN} JOIN tags ON lines.flag = tags.flag GROUP BY label",
])
def test_a_heavy_unit_moves_the_join_by_at_most_k_rows(neighbours, sql):
    plans, vectors = [], []
    for name in ("d0", "d1"):
        plan, vector = _exact(neighbours, sql.replace("FROM lines", f"FROM {name}.lines")
                              .replace("FROM orders", f"FROM {name}.orders")
                              .replace("JOIN orders", f"JOIN {name}.orders")
                              .replace("JOIN lines", f"JOIN {name}.lines")
                              .replace("JOIN tags", f"JOIN {name}.tags"), scope=[name])
        plans.append(plan)
        vectors.append(vector)
    plan = plans[0]
    # direct: clamped sums over the join, no L0/Linf windows (threshold keys still count
    # distinct units per group, over the same rows)
    assert plan.direct_path and "PARTITION BY" not in plan.bounded_sql
    cells = set(vectors[0]) | set(vectors[1])
    width = len(plan.measures)
    for index, measure in enumerate(plan.measures):
        diffs = [abs((vectors[1].get(c) or (0,) * width)[index]
                     - (vectors[0].get(c) or (0,) * width)[index]) for c in cells]
        s = measure.sensitivity
        assert sum(diffs) <= s.l1 and max(diffs) <= s.linf
        assert math.sqrt(sum(d * d for d in diffs)) <= s.l2 + 1e-9
    count = next((m for m in plan.measures if m.kind == "count"), None)
    if "WHERE" not in sql:
        # the heavy customer (42 lines over 6 orders, 4 kept) adds exactly its K kept lines,
        # and the bound is K, not K x K_ORDERS nor L0 x Linf
        total = [sum(v[plan.measures.index(count)] for v in vec.values()) for vec in vectors]
        assert total[1] - total[0] == K
        assert count.sensitivity.l1 == K


def test_noise_free_count_of_one_heavy_unit_is_k(tmp_path):
    frames = _with_heavy({k: v.head(0) for k, v in _data().items()}, 1)
    with Gateway(tmp_path / "h") as gw:
        gw.add_dataset(_meta(), frames)
        plan, vector = _exact(gw, f"SELECT COUNT(*), SUM(qty) {JOIN}")
        assert vector[()] == (K, K * QTY_MAX)
        assert [m.sensitivity.l1 for m in plan.measures] == [K, K * QTY_MAX]
        explained = gw.explain(f"SELECT COUNT(*) {JOIN}", analyst="a")
        notes = " ".join(explained.notes)
        assert "bounded at ingest" in notes and f"at most {K}" in notes
        assert "lines: 5 through orders" in notes and "orders is joined on its enforced key" in notes


def test_bound_multiplies_only_the_sources_no_key_determines(gw):
    def bound(sql):
        plan, _ = gw._plan(sql)
        return plan
    # lines determine orders; the customer (k = 1) joins on the unit
    three = bound(f"SELECT COUNT(*) {JOIN} JOIN customers ON cid = cust")
    assert three.direct_path and three.measures[0].sensitivity.l1 == K
    # two reads of lines through one order: K x K pairs per unit
    pairs = bound("SELECT COUNT(*) FROM lines a JOIN orders ON a.okey = orders.okey "
                  "JOIN lines b ON b.okey = orders.okey")
    assert not pairs.direct_path  # K x K = 25 rows per unit > 1 group x 20 rows: per unit
    from rewriter.scope import build_scope
    from sqlglot import parse_one
    meta = gw.dataset("shop")
    scope = build_scope(parse_one("SELECT COUNT(*) FROM lines a JOIN orders ON a.okey = orders.okey "
                                  "JOIN lines b ON b.okey = orders.okey", read="postgres"),
                        lambda node: resolve_in({"shop": meta}, node))
    assert scope.truncate_rows_per_unit == K * K
    assert sorted(scope.bounding_sources()) == ["a", "b"]


@pytest.mark.parametrize("sql", [
    # the key equality only inside a LEFT join's ON: it filters nothing
    "SELECT COUNT(*) FROM lines JOIN orders ON lines.qty = orders.cust "
    "LEFT JOIN tags ON tags.flag = lines.flag AND lines.okey = orders.okey",
    # a unit equality only inside a LEFT join's ON: the INNER join pairs different people
    "SELECT COUNT(*) FROM customers a JOIN customers b ON a.seg = b.seg "
    "LEFT JOIN tags ON a.cid = b.cid AND tags.flag = a.seg",
    # not a top-level conjunct
    "SELECT COUNT(*) FROM lines JOIN orders ON lines.okey = orders.okey OR lines.qty = 1",
    # a non-FK equality between child and parent
    "SELECT COUNT(*) FROM lines JOIN orders ON lines.lno = orders.okey",
])
def test_joins_not_along_the_key_are_refused(gw, sql):
    with pytest.raises(PolicyRefused):
        gw._plan(sql)


def test_key_link_without_the_enforced_key_gets_no_bound(gw):
    """The same truncated metadata, but not loaded: nothing proved the key distinct, so the
    join may fan out and the planner bounds per unit."""
    meta = _meta()
    assert meta.table("orders").unique_columns == frozenset()
    plan = plan_query(f"SELECT COUNT(*) FROM shop.lines JOIN shop.orders "
                      f"ON lines.okey = orders.okey",
                      lambda node: resolve_in({"shop": meta}, node))
    assert not plan.direct_path and "per_unit" in plan.bounded_sql
    loaded, _ = gw._plan(f"SELECT COUNT(*) {JOIN}")
    assert loaded.direct_path


def test_bench_lineitem_queries_take_the_direct_path(tmp_path):
    """q15, q16, q17, q19 of the TPC-H suite on the ingest metadata: no per-unit GROUP BY."""
    from bench.tpch import data, queries

    meta = data.metadata("ingest")
    assert meta.table("lineitem").truncate_rows_per_unit
    rng = np.random.default_rng(0)
    n_orders = 200

    def frame(table, n, extra):
        cols = {}
        for name, col in table.columns.items():
            if name in extra:
                cols[name] = extra[name]
            elif col.public_keys:
                cols[name] = rng.choice(list(col.public_keys), n)
            elif col.type == "date":
                cols[name] = pd.to_datetime("1994-01-01") + pd.to_timedelta(
                    rng.integers(0, 1500, n), unit="D")
            elif col.type == "string":
                cols[name] = rng.choice(["a", "b"], n)
            else:
                low = col.lower if col.lower is not None else 0
                high = col.upper if col.upper is not None else 100
                cols[name] = rng.uniform(low, high, n).round().astype(int) \
                    if col.type == "int" else rng.uniform(low, high, n)
        return pd.DataFrame(cols)

    okeys = np.arange(n_orders)
    line_orders = rng.choice(okeys, 800)
    frames = {
        "customer": frame(meta.table("customer"), 50, {"c_custkey": np.arange(50)}),
        "orders": frame(meta.table("orders"), n_orders,
                        {"o_orderkey": okeys, "o_custkey": rng.integers(0, 50, n_orders)}),
        "lineitem": frame(meta.table("lineitem"), 800, {"l_orderkey": line_orders}),
        "nation": frame(meta.table("nation"), 25, {"n_nationkey": np.arange(25),
                                                   "n_name": list(meta.table("nation").column(
                                                       "n_name").public_keys),
                                                   "n_regionkey": np.arange(25) % 5}),
        "region": frame(meta.table("region"), 5, {"r_regionkey": np.arange(5),
                                                  "r_name": list(meta.table("region").column(
                                                      "r_name").public_keys)}),
    }
    with Gateway(tmp_path / "tpch") as gw:
        gw.add_dataset(meta, frames)
        for q in queries.select(["q15_pricing_summary", "q16_late_lines_by_priority",
                                 "q17_shipmode_revenue", "q19_median_line_price"]):
            plan, _ = gw._plan(q.sql)
            assert plan.direct_path, q.name
            for sql in (plan.bounded_sql, plan.quantile_sql or ""):
                assert "per_unit" not in sql and "PARTITION BY" not in sql, q.name
            gw.query(q.sql, analyst="bench", epsilon=1.0)  # runs end to end

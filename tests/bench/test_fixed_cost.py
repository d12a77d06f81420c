"""Contracts of the fixed-cost cuts (issue 7):

* post-processing that is a plain projection runs without the engine and gives exactly the
  engine's rows (values, Python types, sign of zero) and types; anything else, or values the
  engine must decide (a zero divisor, NULL, overflow), still goes through the engine;
* the SQLite ledger reads the answer cache + override + charges in one statement, and a
  charge is one write transaction with no separate pre-check read; limits of a budget never
  seen before are computed outside the write lock;
* quantile scores computed from sorted values equal OpenDP's scorer exactly, and the
  selection is OpenDP's noisy max; vectors this path cannot take use OpenDP's whole chain.
"""
from __future__ import annotations

import dataclasses
import sqlite3

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from accountant import Accountant, PrivacyCost, SqliteLedger
from accountant import budget as budget_module
from rewriter.plan import QuantileMeasure
from sqlgate import postprocess, release
from sqlgate.errors import BudgetExhausted
from sqlgate.executor import sandboxed_duckdb
from sqlgate.gateway import Gateway, _noisy_schema, _noisy_table
from sqlgate.metadata import Budget, parse_dataset
from sqlgate.postprocess import (POSTPROCESS_MEMORY_LIMIT, compile_projection,
                                 run_postprocess, verified_projection)

BIG = 50.0


def _meta(mechanism="laplace", budget_epsilon=1e6):
    table = {"privacy_unit": "uid", "max_groups_per_unit": 3, "max_rows_per_group": 4,
             "columns": {
                 "uid": "int",
                 "colour": {"type": "string", "public_keys": ["red", "blue"]},
                 "size": {"type": "int", "public_keys": [1, 2, 3]},
                 "day": {"type": "date", "public_keys": ["2024-01-01", "2024-01-02"]},
                 "flag": {"type": "bool", "public_keys": [True, False]},
                 "price": {"type": "float", "lower": -50, "upper": 100, "nullable": False},
                 "qty": {"type": "int", "lower": 0, "upper": 20, "nullable": False},
                 "ratio": {"type": "float", "lower": 0, "upper": 0.1, "nullable": False}}}
    return parse_dataset({"dataset": "shop", "budget": {"epsilon": budget_epsilon, "delta": 1e-3},
                          "query": {"epsilon": 1.0, "delta": 1e-7, "mechanism": mechanism},
                          "tables": {"sales": table}})


def _frame(n_units=200, seed=11):
    rng = np.random.default_rng(seed)
    uid = np.repeat(np.arange(n_units), 3)
    n = len(uid)
    return pd.DataFrame({
        "uid": uid,
        "colour": rng.choice(["red", "blue", "green"], n),
        "size": rng.integers(1, 5, n),
        "day": pd.to_datetime(rng.choice(["2024-01-01", "2024-01-02"], n)).date,
        "flag": rng.random(n) < 0.5,
        "price": rng.uniform(-60, 110, n),
        "qty": rng.integers(0, 25, n),
        "ratio": rng.uniform(0, 0.12, n),
    })


@pytest.fixture
def gw(tmp_path):
    gateway = Gateway(tmp_path / "home")
    gateway.add_dataset(_meta(), {"sales": _frame()})
    yield gateway
    gateway.close()


@pytest.fixture
def scratch():
    conn = sandboxed_duckdb(None, threads=1, memory_limit=POSTPROCESS_MEMORY_LIMIT)
    yield conn
    conn.close()


# ---------------------------------------------------------------- engine-free projections

PROJECTIONS = [
    "SELECT COUNT(*) AS n FROM sales",
    "SELECT colour, COUNT(*) AS n, SUM(price) AS s FROM sales GROUP BY colour",
    "SELECT size, colour, AVG(price) AS a, SUM(qty) AS q FROM sales GROUP BY size, colour",
    "SELECT day, STDDEV(price) AS sd, VARIANCE(qty) AS v FROM sales GROUP BY day",
    "SELECT flag, VAR_POP(ratio) AS v, STDDEV_POP(price) AS sd, AVG(ratio) AS r "
    "FROM sales GROUP BY flag",
    "SELECT SUM(price) / 2 AS half, COUNT(*) - 1 AS less, COUNT(*) * 3 AS triple, "
    "-SUM(price) AS neg FROM sales",
    "SELECT COUNT(*) AS n, colour FROM sales GROUP BY colour",           # reordered
    "SELECT MEDIAN(price) AS m, COUNT(*) AS n FROM sales",
]


def _random_noisy(schema: pa.Schema, rows: int, rng) -> pa.Table:
    arrays = []
    for field in schema:
        if field.type == pa.int64():
            values = rng.integers(-(2**40), 2**40, rows)
            values[: rows // 4] = rng.integers(-3, 4, rows // 4)   # small, zero, negative
            arrays.append(pa.array(values, type=pa.int64()))
        elif field.type == pa.float64():
            arrays.append(pa.array(rng.normal(0, 1e5, rows), type=pa.float64()))
        else:
            arrays.append(pa.nulls(rows, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _same(a, b):
    return postprocess._same_rows(a, b)


@pytest.mark.parametrize("sql", PROJECTIONS)
def test_projection_without_engine_equals_the_engine_bit_for_bit(gw, scratch, sql):
    planned, _ = gw._planned(sql)
    assert planned.fast_postprocess is not None, planned.postprocess_sql
    schema = _noisy_schema(planned.plan)
    rng = np.random.default_rng(3)
    for rows in (0, 1, 7, 200):
        noisy = _random_noisy(schema, rows, rng)
        expected_rows, expected_types = run_postprocess(scratch, planned.postprocess_sql, noisy)
        got = planned.fast_postprocess.run(noisy)
        assert got is not None
        assert _same(got[0], expected_rows)
        assert got[1] == expected_types


@pytest.mark.parametrize("sql", PROJECTIONS)
def test_gateway_answers_equal_the_engine_path(gw, sql):
    planned, entry = gw._planned(sql)
    plan = planned.plan
    release_plan = gw._calibrate(plan, entry.meta, BIG)
    raw = gw.executor.run(plan.bounded_sql).rows if plan.bounded_sql else []
    values = gw.executor.run(plan.quantile_sql, as_arrow=True) if plan.quantile_sql else None
    noisy = _noisy_table(plan, release_plan, raw, values)
    fast = gw._postprocess(planned, release_plan, noisy)
    engine = gw._postprocess(dataclasses.replace(planned, fast_postprocess=None), release_plan,
                             noisy)
    assert _same(fast[0], engine[0]) and fast[1] == engine[1]
    assert [c.name for c in fast[1]] == [c.name for c in gw.describe(sql)]


def test_keys_of_every_type_pass_through_unchanged(gw, scratch):
    for sql, keys in [
        ("SELECT size, colour, COUNT(*) AS n FROM sales GROUP BY size, colour",
         [pa.array([1, None, 3], pa.int64()), pa.array(["red", None, "\u00e9"], pa.string())]),
        ("SELECT day, flag, COUNT(*) AS n FROM sales GROUP BY day, flag",
         [pa.array([19000, None, 0], pa.date32()), pa.array([True, None, False])]),
    ]:
        planned, _ = gw._planned(sql)
        assert planned.fast_postprocess is not None
        noisy = pa.Table.from_arrays(keys + [pa.array([5, 0, -2], pa.int64())],
                                     schema=_noisy_schema(planned.plan))
        got = planned.fast_postprocess.run(noisy)
        assert got is not None
        assert _same(got[0], run_postprocess(scratch, planned.postprocess_sql, noisy)[0])


@pytest.mark.parametrize("sql", [
    "SELECT colour, COUNT(*) AS n FROM sales GROUP BY colour HAVING COUNT(*) > 10",
    "SELECT colour, COUNT(*) AS n FROM sales GROUP BY colour ORDER BY n DESC",
    "SELECT colour, COUNT(*) AS n FROM sales GROUP BY colour LIMIT 1",
    "SELECT colour, ROUND(SUM(price)) AS r FROM sales GROUP BY colour",
    "SELECT COUNT(*) / 2 AS half FROM sales",                     # integer division
])
def test_other_post_processing_keeps_the_engine(gw, sql):
    planned, _ = gw._planned(sql)
    assert planned.fast_postprocess is None
    result = gw.query(sql, analyst="a", epsilon=BIG)
    assert [c.name for c in result.columns] == [c.name for c in gw.describe(sql)]


def test_order_by_and_limit_still_apply(gw):
    result = gw.query("SELECT colour, COUNT(*) AS n FROM sales GROUP BY colour ORDER BY n DESC "
                      "LIMIT 1", analyst="a", epsilon=BIG)
    assert len(result.rows) == 1


def test_values_the_engine_must_decide_fall_back(gw, scratch):
    planned, _ = gw._planned("SELECT SUM(price) / COUNT(*) AS per_row FROM sales")
    fast = planned.fast_postprocess
    assert fast is not None
    schema = _noisy_schema(planned.plan)
    # a noisy count of zero divides by zero: the engine decides what that gives
    count_name = next(m.name for m in planned.plan.measures if m.kind == "count")
    zero = pa.Table.from_arrays([pa.array([0 if f.name == count_name else 10], pa.int64())
                                 for f in schema], schema=schema)
    assert fast.run(zero) is None
    release_plan = gw._calibrate(planned.plan, gw.dataset("shop"), 1.0)
    rows, _ = gw._postprocess(planned, release_plan, zero)
    assert _same(rows, run_postprocess(scratch, planned.postprocess_sql, zero)[0])
    # NULL in arithmetic, and columns of an unexpected type, go to the engine too
    nulls = pa.Table.from_arrays([pa.array([None], pa.int64()) for _ in schema], schema=schema)
    assert fast.run(nulls) is None
    as_float = pa.Table.from_arrays([pa.array([1.0]) for _ in schema], names=schema.names)
    assert fast.run(as_float) is None


def test_integer_overflow_is_left_to_the_engine():
    select = parse_post("SELECT m0 * 4611686018427387904 AS x FROM noisy")
    fast = compile_projection(select, pa.schema([("m0", pa.int64())]))
    assert fast is not None
    assert fast.run(pa.table({"m0": pa.array([1], pa.int64())})) == ([(4611686018427387904,)],
                                                                      ["BIGINT"])
    assert fast.run(pa.table({"m0": pa.array([2], pa.int64())})) is None


def parse_post(sql):
    import sqlglot
    return sqlglot.parse_one(sql, read="duckdb")


def test_a_projection_that_disagrees_with_the_engine_is_not_used(scratch, monkeypatch):
    select = parse_post('SELECT CAST("m0" AS DOUBLE) / 3 AS x, "k0" FROM noisy')
    sql = select.sql(dialect="duckdb")
    schema = pa.schema([("k0", pa.string()), ("m0", pa.int64())])
    assert verified_projection(scratch, select, sql, schema) is not None
    # A compiled projection with the wrong arithmetic is caught at planning time.
    monkeypatch.setitem(postprocess._OPERATIONS, postprocess.exp.Div, lambda a, b: a / b + 1e-9)
    assert verified_projection(scratch, select, sql, schema) is None
    monkeypatch.undo()
    # So is one whose result type differs from the engine's.
    monkeypatch.setattr(postprocess, "_ARROW_TO_ENGINE",
                        {**postprocess._ARROW_TO_ENGINE, pa.string(): "BLOB"})
    assert verified_projection(scratch, select, sql, schema) is None


def test_compile_refuses_what_it_cannot_reproduce():
    schema = pa.schema([("m0", pa.int64()), ("k0", pa.string())])
    for sql in ("SELECT m0 FROM noisy WHERE m0 > 1", "SELECT m0 FROM noisy ORDER BY m0",
                "SELECT m0 FROM noisy LIMIT 1", "SELECT ABS(m0) AS a FROM noisy",
                "SELECT m0 / 2 AS a FROM noisy", "SELECT m0 * 0.5 AS a FROM noisy",
                "SELECT 1 AS one FROM noisy", "SELECT k0 || 'x' AS a FROM noisy",
                "SELECT m0 FROM other", "SELECT x.m0 FROM noisy AS x",
                "SELECT DISTINCT m0 FROM noisy", "SELECT nope FROM noisy"):
        assert compile_projection(parse_post(sql), schema) is None, sql


# ---------------------------------------------------------------- ledger statements


def _traced(ledger: SqliteLedger) -> list[str]:
    statements: list[str] = []
    with ledger._connection() as conn:
        conn.set_trace_callback(statements.append)
    return statements


def test_a_query_makes_one_ledger_read_and_one_write_transaction(gw):
    gw.query("SELECT COUNT(*) AS n FROM sales", analyst="warm", epsilon=1.0)
    statements = _traced(gw.accountant.ledger)
    gw.query("SELECT colour, COUNT(*) AS n FROM sales GROUP BY colour", analyst="a",
             epsilon=1.0)
    upper = [s.strip().upper() for s in statements]
    assert upper.count("BEGIN IMMEDIATE") == 1 and upper.count("COMMIT") == 1
    assert not any(s == "BEGIN" for s in upper)          # no separate read transaction
    # lookup (1); the charge, begun before the engine and committed on a worker while it
    # runs: busy_timeout 0, BEGIN IMMEDIATE, busy_timeout back, read, insert, COMMIT (6);
    # the answer after it, one unsynced statement: synchronous NORMAL, insert, synchronous
    # FULL (3). Was 15, then 6 with the answer in the charge's transaction.
    assert len(statements) == 10, statements
    relaxed = upper.index("PRAGMA SYNCHRONOUS = NORMAL")
    assert upper.index("COMMIT") < relaxed                  # the charge's commit: synced
    assert upper[relaxed + 1].startswith("INSERT INTO ANSWERS")
    assert upper[relaxed + 2] == "PRAGMA SYNCHRONOUS = FULL"
    again = gw.query("SELECT colour, COUNT(*) AS n FROM sales GROUP BY colour", analyst="a",
                     epsilon=1.0)
    assert again.cached and len(statements) == 11          # a free repeat: one read


def test_one_statement_state_matches_the_ledger_contents(tmp_path):
    ledger = SqliteLedger(tmp_path / "l.sqlite")
    acct = Accountant(ledger)
    acct.register_dataset("d", measure="zcdp", default_budget=Budget(10.0, 1e-3))
    acct.charge("a", "d", PrivacyCost("zcdp", epsilon=1.0, delta=1e-6, rho=0.01), query_key="k1",
                answer=b"one")
    acct.charge("a", "d", PrivacyCost("pure", epsilon=0.5), query_key="k1", answer=b"two")
    acct.charge("b", "d", PrivacyCost("zcdp", epsilon=1.0, rho=0.02), query_key="k1",
                answer=b"other analyst")
    acct.set_budget("a", "d", Budget(5.0, 1e-4), set_by="owner")
    cached, override, spent = ledger.lookup("a", "d", "k1")
    assert cached == b"two"                                  # the latest answer
    override, spent = ledger.snapshot("a", "d")
    assert override == Budget(5.0, 1e-4)
    assert spent.queries == 2 and spent.zcdp_queries == 1
    assert spent.rho == pytest.approx(0.01 + 0.5 ** 2 / 2) and spent.delta == pytest.approx(1e-6)
    assert spent.pure_epsilon == pytest.approx(0.5)
    assert ledger.lookup("a", "d", "missing")[0] is None
    assert ledger.get_override("b", "d") is None


def test_a_direct_charge_over_budget_is_refused_under_the_lock(tmp_path):
    acct = Accountant(SqliteLedger(tmp_path / "l.sqlite"))
    acct.register_dataset("d", default_budget=Budget(1.0, 0.0))
    acct.charge("a", "d", PrivacyCost("pure", epsilon=0.7), query_key="k", answer=b"x")
    with pytest.raises(BudgetExhausted) as refused:
        acct.charge("a", "d", PrivacyCost("pure", epsilon=0.7), query_key="k2", answer=b"y")
    assert refused.value.details["remaining_epsilon"] == pytest.approx(0.3)
    assert len(acct.history("a", "d")) == 1 and acct.cached_answer("a", "d", "k2") is None


def test_new_budget_limits_are_computed_outside_the_write_lock(tmp_path, monkeypatch):
    path = tmp_path / "l.sqlite"
    acct = Accountant(SqliteLedger(path))
    acct.register_dataset("d", measure="zcdp", default_budget=Budget(3.0, 1e-5))
    # An override written by another process: no limits of it were ever computed here.
    SqliteLedger(path).set_override("a", "d", Budget(2.5, 1.2345e-6), set_by="owner")
    budget_module.Limits.for_budget("zcdp", Budget(3.0, 1e-5))   # the default: warm
    locked = []
    original = budget_module.rho_for_epsilon

    def rho_for_epsilon(epsilon, delta):
        misses = original.cache_info().misses
        result = original(epsilon, delta)
        if original.cache_info().misses > misses:    # the slow bisection really ran
            probe = sqlite3.connect(path, timeout=0)
            try:
                probe.execute("BEGIN IMMEDIATE")  # fails while a charge holds the write lock
                probe.execute("ROLLBACK")
                locked.append(False)
            except sqlite3.OperationalError:
                locked.append(True)
            finally:
                probe.close()
        return result

    monkeypatch.setattr(budget_module, "rho_for_epsilon", rho_for_epsilon)
    charge_id = acct.charge("a", "d", PrivacyCost("zcdp", epsilon=1.0, rho=0.01),
                            query_key="k", answer=b"x")
    assert locked == [False]       # the override's limits: computed once, outside the lock
    assert [h["id"] for h in acct.history("a", "d")] == [charge_id]     # charged once
    assert acct.cached_answer("a", "d", "k") == b"x"


# ---------------------------------------------------------------- quantile scores


def _quantile(alpha, candidates, rows_per_unit=3):
    return QuantileMeasure("q0", "x", alpha, candidates[0], candidates[-1], tuple(candidates), 1,
                           rows_per_unit)


GRIDS = [tuple(i * (600000 / 1023) for i in range(1024)), tuple(float(i) for i in range(1, 51)),
         (-1.5, 0.0, 2.25)]


@pytest.mark.parametrize("alpha", [0.5, 0.9, 0.1, 0.25, 0.333, 0.123456, 0.0, 1.0])
@pytest.mark.parametrize("grid", range(len(GRIDS)))
def test_scores_equal_opendp_scorer(alpha, grid):
    candidates = GRIDS[grid]
    q = _quantile(alpha, candidates)
    weights = release._score_weights(q)
    assert weights is not None
    scorer = release._quantile_scorer(q)
    rng = np.random.default_rng(grid)
    for n in (0, 1, 2, 9, 1000, 30000):
        values = rng.uniform(candidates[0] - 5, candidates[-1] + 5, n)
        values[: n // 3] = rng.choice(candidates, n // 3)          # ties on candidates
        values[n // 3: n // 2] = candidates[0]
        assert release._scores(weights, values).tolist() == list(scorer(values))


def test_quantile_release_uses_opendp_noisy_max_on_the_scores(monkeypatch):
    q = _quantile(0.5, GRIDS[1])
    spec = release._quantile(q, 1.0)
    seen = []
    original = release._noisy_max

    def noisy_max(q_, scale):
        measurement = original(q_, scale)

        def select(scores):
            seen.append(list(scores))
            return measurement(scores)
        return select

    monkeypatch.setattr(release, "_noisy_max", noisy_max)
    values = np.linspace(1, 50, 300)
    release.noisy_quantiles(q, spec, [values, []])
    scorer = release._quantile_scorer(q)
    assert seen == [list(scorer(values)), list(scorer(np.empty(0)))]


def test_quantiles_are_accurate_and_nan_goes_through_opendp(monkeypatch):
    q = _quantile(0.5, GRIDS[1], rows_per_unit=1)
    spec = release._quantile(q, 50.0)
    assert release.noisy_quantiles(q, spec, [np.linspace(10, 30, 2001)])[0] == \
        pytest.approx(20.0, abs=1.0)
    chains = []
    original = release._quantile_measurement

    def chain(q_, scale):
        chains.append(scale)
        return original(q_, scale)

    monkeypatch.setattr(release, "_quantile_measurement", chain)
    release.noisy_quantiles(q, spec, [np.linspace(10, 30, 11)])
    assert chains == []                         # scores computed here, OpenDP selects
    release.noisy_quantiles(q, spec, [np.array([1.0, np.nan, 3.0])])
    assert chains == [spec.scale]               # NaN: OpenDP's own scorer, as before


def test_a_scorer_that_disagrees_is_never_replaced(monkeypatch):
    q = _quantile(0.5, (0.0, 1.0, 2.0, 3.5))
    release._score_weights.cache_clear()
    try:
        monkeypatch.setattr(release, "_scores",
                            lambda weights, values: np.zeros(len(weights.candidates), np.uint64))
        assert release._score_weights(q) is None
    finally:
        release._score_weights.cache_clear()


def test_gateway_quantiles_with_and_without_groups(gw):
    overall = gw.query("SELECT MEDIAN(price) AS m FROM sales", analyst="a", epsilon=BIG)
    assert -50 <= overall.rows[0][0] <= 100
    grouped = gw.query("SELECT colour, PERCENTILE_CONT(0.9) WITHIN GROUP (ORDER BY qty) AS p "
                       "FROM sales GROUP BY colour", analyst="a", epsilon=BIG)
    assert sorted(r[0] for r in grouped.rows) == ["blue", "red"]
    assert all(0 <= r[1] <= 20 for r in grouped.rows)


# ---------------------------------------------------------------- planner: bare bins, clamps


def test_case_bins_that_cannot_fail_run_without_try(gw):
    safe = ("SELECT CASE WHEN price < 0 THEN 'neg' WHEN price < 50 AND qty >= 3 THEN 'mid' "
            "ELSE 'high' END AS band, COUNT(*) AS n FROM sales GROUP BY band")
    plan, _ = gw._plan(safe)
    assert "TRY(" not in plan.bounded_sql
    for unsafe in ("SELECT CASE WHEN CAST(colour AS INT) < 5 THEN 'a' ELSE 'b' END AS b, "
                   "COUNT(*) AS n FROM sales GROUP BY b",
                   "SELECT CASE WHEN price / qty < 5 THEN 'a' ELSE 'b' END AS b, "
                   "COUNT(*) AS n FROM sales GROUP BY b",
                   "SELECT CASE WHEN price < 5 OR colour = 'red' THEN 'a' ELSE 'b' END AS b, "
                   "COUNT(*) AS n FROM sales GROUP BY b"):
        plan, _ = gw._plan(unsafe)
        assert "TRY(CASE" in plan.bounded_sql, unsafe
        gw.query(unsafe, analyst="a", epsilon=BIG)        # still answers, never fails on data
    # the bins are the same rows either way
    conn = gw.executor.connection
    expected = dict(conn.execute(
        "SELECT CASE WHEN price < 0 THEN 'neg' WHEN price < 50 AND qty >= 3 THEN 'mid' ELSE "
        "'high' END AS band, COUNT(*) FROM shop.sales GROUP BY band").fetchall())
    got = {row[0]: row[1] for row in gw.query(safe, analyst="b", epsilon=100.0).rows}
    assert got.keys() == expected.keys()
    assert all(abs(got[k] - expected[k]) <= 5 for k in expected)


def test_clamps_equal_least_greatest_on_every_value(scratch):
    from sqlglot import exp as sqlexp

    from rewriter.planner import _clamped
    values = ", ".join(f"({v}::DOUBLE)" for v in (
        "NULL", "'nan'", "'inf'", "'-inf'", "-0.0", "0.0", "-1e300", "1e300", "5.5", "-1000.0",
        "10000.0", "-1000.0000001", "10000.0000001"))
    clamp = _clamped(sqlexp.column("v"), -1000, 10000).sql(dialect="duckdb")
    got = scratch.execute(f"SELECT {clamp} FROM (VALUES {values}) t(v)").fetchall()
    expected = scratch.execute("SELECT LEAST(GREATEST(CAST(v AS DOUBLE), -1000), 10000) "
                               f"FROM (VALUES {values}) t(v)").fetchall()
    assert [repr(r) for r in got] == [repr(r) for r in expected]


def test_quantile_values_rank_only_heavy_pairs_and_keep_the_same_rows(tmp_path):
    frame = _frame()
    rng = np.random.default_rng(5)
    heavy = pd.DataFrame({"uid": np.repeat([1000, 1001], 12), "colour": "red", "size": 1,
                          "day": frame["day"].iloc[0], "flag": True,
                          "price": np.round(rng.uniform(-60, 110, 24), 1), "qty": 1,
                          "ratio": 0.05})
    heavy.loc[3:8, "price"] = 7.0                                     # ties in one pair
    with Gateway(tmp_path / "q") as gw:
        gw.add_dataset(_meta(), {"sales": pd.concat([frame, heavy], ignore_index=True)})
        sql = "SELECT colour, MEDIAN(price) AS m FROM sales GROUP BY colour"
        plan, _ = gw._plan(sql)
        assert "ROW_NUMBER()" in plan.quantile_sql and "__counts" in plan.quantile_sql
        all_rows = gw.executor.run(plan.quantile_sql).rows
        # No per-row key test (no L0 window here): the release reads the public cells only.
        assert "IN ('red', 'blue')" not in plan.quantile_sql
        assert {row[0] for row in all_rows} == {"red", "blue", "green"}
        got = [row for row in all_rows if row[0] in ("red", "blue")]
        clamp = "LEAST(GREATEST(CAST(price AS DOUBLE), -50), 100)"
        reference = gw.executor.run(
            f"SELECT colour, v FROM (SELECT colour, {clamp} AS v, ROW_NUMBER() OVER "
            f"(PARTITION BY uid, colour ORDER BY HASH({clamp})) AS r FROM shop.sales "
            "WHERE colour IN ('red', 'blue')) WHERE r <= 4").rows
        assert sorted(got) == sorted(reference)
        assert sum(1 for row in got if row[0] == "red") < \
            len(frame[frame.colour == "red"]) + 24                   # heavy pairs were capped
        result = gw.query(sql, analyst="a", epsilon=BIG)
        assert sorted(r[0] for r in result.rows) == ["blue", "red"]


# ---------------------------------------------------------------- executor: prepared statements


def test_prepared_statements_follow_replaced_data_and_survive_interrupts(tmp_path):
    from sqlgate.errors import QueryCanceled

    with Gateway(tmp_path / "p") as gw:
        gw.add_dataset(_meta(), {"sales": _frame(n_units=50)})
        count = 'SELECT COUNT(*) AS n, SUM("qty") AS q FROM "shop"."sales"'
        first = gw.executor.run(count).rows
        assert gw.executor.run(count).rows == first                 # EXECUTE of the prepared
        assert count in gw.executor._local.prepared
        gw.add_dataset(_meta(), {"sales": _frame(n_units=80)}, replace=True)
        assert gw.executor.run(count).rows[0][0] == 80 * 3          # rebound to the new table
        slow = ('SELECT COUNT(*) FROM range(100000000) a, range(100000000) b '
                'WHERE a.range + b.range = -1')
        with pytest.raises(QueryCanceled):
            gw.executor.run(slow, timeout_s=0.2)
        assert gw.executor.run(count).rows[0][0] == 80 * 3          # the kept cursor still works
        with pytest.raises(Exception):
            gw.executor.run('SELECT * FROM "shop"."missing"')
        assert gw.executor.run(count).rows[0][0] == 80 * 3
        gw.drop_dataset("shop")
        from sqlgate.errors import ExecutionFailed
        with pytest.raises(ExecutionFailed):
            gw.executor.run(count)                                   # dropped: no stale plan


def test_prepared_statements_are_bounded_per_thread(tmp_path, monkeypatch):
    import threading

    with Gateway(tmp_path / "b") as gw:
        gw.add_dataset(_meta(), {"sales": _frame(n_units=20)})
        monkeypatch.setattr(gw.executor, "PREPARED_PER_THREAD", 3)
        for i in range(6):
            assert gw.executor.run(f'SELECT {i} AS x, COUNT(*) FROM "shop"."sales"').rows[0][0] == i
        assert len(gw.executor._local.prepared) == 3
        seen = []
        worker = threading.Thread(target=lambda: seen.append(
            gw.executor.run('SELECT COUNT(*) FROM "shop"."sales"').rows))
        worker.start()
        worker.join()
        assert seen == [[(60,)]]
        assert len(gw.executor._kept) == 2                         # one cursor per thread
        other = threading.Thread(target=lambda: gw.executor.run("SELECT 1"))
        other.start()
        other.join()
        assert len(gw.executor._kept) == 2          # the ended thread's cursor was closed

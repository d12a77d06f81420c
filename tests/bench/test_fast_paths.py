"""Contracts of the second round of performance changes:

* one ledger read (cached answer or budget pre-check), one durable write (the charge) and
  one unsynced write (the answer) per query; noise drawn before the charge is never
  released unless the charge commits, and a failure after noise was drawn is charged all
  the same;
* quantile values grouped per cell with Arrow codes equal a plain groupby;
* WHERE conjuncts that cannot fail stay bare (pushed into scans), the rest stays in TRY();
* public keys filtered after aggregation still release exactly the public cells.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from accountant import Accountant, PrivacyCost, SqliteLedger
from sqlgate import gateway as gateway_module
from sqlgate.errors import BudgetExhausted, UnsupportedQuery
from sqlgate.gateway import Gateway
from sqlgate.metadata import Budget, parse_dataset

BIG = 50.0


def _meta(budget_epsilon=1e6):
    table = {"privacy_unit": "uid", "max_groups_per_unit": 2, "max_rows_per_group": 3,
             "columns": {"uid": "int",
                         "colour": {"type": "string", "public_keys": ["red", "blue"]},
                         "code": "string",
                         "day": "date",
                         "price": {"type": "float", "lower": 0, "upper": 100,
                                   "nullable": False}}}
    return parse_dataset({"dataset": "shop", "budget": {"epsilon": budget_epsilon, "delta": 1e-3},
                          "query": {"epsilon": 1.0, "delta": 1e-7}, "tables": {"sales": table}})


def _frame(n_units=300, seed=5):
    rng = np.random.default_rng(seed)
    uid = np.repeat(np.arange(n_units), 2)
    days = pd.to_datetime("2024-01-01") + pd.to_timedelta(rng.integers(0, 60, len(uid)), "D")
    return pd.DataFrame({
        "uid": uid,
        "colour": rng.choice(["red", "blue", "green"], len(uid)),
        # one in ten codes is not a number: a CAST of it fails inside the engine
        "code": np.where(rng.random(len(uid)) < 0.1, "x", rng.integers(0, 9, len(uid)).astype(str)),
        "day": days.date,
        "price": rng.uniform(0, 100, len(uid)),
    })


@pytest.fixture
def gw(tmp_path):
    gateway = Gateway(tmp_path / "home")
    gateway.add_dataset(_meta(), {"sales": _frame()})
    yield gateway
    gateway.close()


SQL = "SELECT colour, COUNT(*) AS n FROM sales GROUP BY colour"


# ---------------------------------------------------------------- ledger: one read, one write


def test_charge_stores_the_answer_in_its_own_transaction(tmp_path):
    ledger = SqliteLedger(tmp_path / "l.sqlite")
    acct = Accountant(ledger)
    acct.register_dataset("d", default_budget=Budget(epsilon=1.0, delta=0.0))
    cost = PrivacyCost("pure", epsilon=0.6, delta=0.0)
    assert acct.cached_or_check("a", "d", "k", cost) is None
    charge_id = acct.charge("a", "d", cost, query_key="k", query_text="q", answer=b"noisy")
    assert acct.cached_answer("a", "d", "k") == b"noisy"
    assert acct.cached_or_check("a", "d", "k", cost) == b"noisy"     # free repeat, no check
    with pytest.raises(BudgetExhausted):
        acct.cached_or_check("a", "d", "other", cost)                 # 0.6 + 0.6 > 1
    with pytest.raises(BudgetExhausted):
        acct.charge("a", "d", cost, query_key="other", answer=b"never")
    assert acct.cached_answer("a", "d", "other") is None              # refused: nothing stored
    assert [h["id"] for h in acct.history("a", "d")] == [charge_id]
    with pytest.raises(Exception):
        acct.record_answer(charge_id, b"again")                      # still once per charge


def test_query_uses_one_durable_charge_and_one_answer_write(gw, monkeypatch):
    """The charge (begun before the engine, committed while it runs) is the only synced
    write; the answer is stored after it in its own write (sqlgate/charge_ahead.py)."""
    calls = []
    ledger = gw.accountant.ledger
    originals = ledger.try_begin_charge, ledger.charge, ledger.record_answer

    def begin(request, decide):
        calls.append("begin")
        return originals[0](request, decide)

    def charge(request, decide, answer=None):
        calls.append("charge")
        return originals[1](request, decide, answer)

    def record_answer(charge_id, answer):
        calls.append(("answer", charge_id))
        return originals[2](charge_id, answer)

    monkeypatch.setattr(ledger, "try_begin_charge", begin)
    monkeypatch.setattr(ledger, "charge", charge)
    monkeypatch.setattr(ledger, "record_answer", record_answer)
    first = gw.query(SQL, analyst="a", epsilon=BIG)
    [charge_id] = [h["id"] for h in gw.accountant.history("a", "shop")]
    assert calls == ["begin", ("answer", charge_id)]   # the lock was free: begun inline
    again = gw.query(SQL, analyst="a", epsilon=BIG)
    assert again.cached and again.rows == first.rows and len(calls) == 2


def test_a_failure_after_noise_is_charged_and_nothing_is_released(gw, monkeypatch):
    def boom(*args, **kwargs):
        raise UnsupportedQuery("the query's result expressions could not be computed")

    monkeypatch.setattr(gw, "_postprocess", boom)
    with pytest.raises(UnsupportedQuery):
        gw.query(SQL, analyst="a", epsilon=1.0)
    status = gw.budget("a", "shop")
    assert status.queries == 1 and status.spent_epsilon == pytest.approx(1.0)
    history = gw.accountant.history("a", "shop")
    assert gw.accountant.cached_answer("a", "shop", history[0]["query_key"]) is None


def test_refused_charge_releases_nothing_whatever_the_noise(tmp_path, monkeypatch):
    with Gateway(tmp_path / "h") as gw:
        gw.add_dataset(_meta(budget_epsilon=1.5), {"sales": _frame()})
        gw.query(SQL, analyst="a", epsilon=1.0)
        # The pre-check would refuse; skip it to reach the charge with noise already drawn.
        monkeypatch.setattr(gw.accountant, "cached_or_check", lambda *a, **k: None)
        with pytest.raises(BudgetExhausted):
            gw.query(SQL.replace("n FROM", "cnt FROM"), analyst="a", epsilon=1.0)

        def boom(*args, **kwargs):
            raise UnsupportedQuery("failed on a noisy value")

        # A failure after noise with no budget left surfaces as BudgetExhausted, not as the
        # noise-dependent error.
        monkeypatch.setattr(gw, "_postprocess", boom)
        with pytest.raises(BudgetExhausted):
            gw.query(SQL.replace("n FROM", "m FROM"), analyst="a", epsilon=1.0)
        assert gw.budget("a", "shop").queries == 1


# ---------------------------------------------------------------- quantile values per cell


def _reference(frame: pd.DataFrame, key_count: int):
    keys = list(frame.columns[:key_count])
    out = {}
    for key, group in frame.groupby(keys, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        key = tuple(None if (isinstance(v, float) and v != v) else v for v in key)
        out[key] = {i: group[c].to_numpy(dtype=float)
                    for i, c in enumerate(frame.columns[key_count:])}
    return out


@pytest.mark.parametrize("rows,cardinality", [(500, 3), (400, 300)])
def test_values_by_cell_equals_a_groupby(rows, cardinality):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({
        "k0": pd.Series(rng.choice([f"s{i}" for i in range(cardinality)] + [None], rows),
                        dtype="object"),
        "k1": rng.integers(0, cardinality, rows),
        "v0": rng.normal(size=rows),
        "v1": rng.normal(size=rows),
    })
    expected = _reference(frame, 2)
    for given in (frame, pa.Table.from_pandas(frame, preserve_index=False)):
        got = gateway_module._values_by_cell(given, 2)
        assert set(got) == set(expected)
        for key, values in expected.items():
            for i in (0, 1):
                np.testing.assert_array_equal(got[key][i], values[i])


def test_values_by_cell_without_keys_and_empty():
    frame = pd.DataFrame({"v": [3.0, 1.0, 2.0]})
    got = gateway_module._values_by_cell(frame, 0)
    np.testing.assert_array_equal(got[()][0], [3.0, 1.0, 2.0])
    assert gateway_module._values_by_cell(frame.iloc[:0], 0) == {}
    assert gateway_module._values_by_cell(None, 1) == {}


def test_values_listed_per_cell_equal_the_row_form():
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({
        "k0": pd.Series(rng.choice(["a", "b", None], 300), dtype="object"),
        "k1": rng.integers(0, 4, 300),
        "v_q0": rng.normal(size=300),
        "v_q1": rng.normal(size=300),
    })
    expected = gateway_module._values_by_cell(frame, 2)
    import duckdb
    listed = duckdb.connect().sql(
        'SELECT k0, k1, LIST(v_q0) AS v_q0, LIST(v_q1) AS v_q1 FROM frame GROUP BY ALL'
    ).to_arrow_table()
    for given in (listed, listed.slice(0, listed.num_rows)):
        got = gateway_module._values_by_cell(given, 2)
        assert set(got) == set(expected)
        for key, values in expected.items():
            for i in (0, 1):
                np.testing.assert_array_equal(np.sort(got[key][i]), np.sort(values[i]))


def test_grouped_quantile_values_are_listed_by_the_engine(gw):
    sql = "SELECT colour, MEDIAN(price) AS m FROM sales GROUP BY colour"
    planned, _ = gw._planned(sql)
    assert planned.listed_quantile_sql.startswith('SELECT "k0", LIST("v_q0")')
    listed = gw.executor.run(planned.listed_quantile_sql, as_arrow=True)
    rows = gw.executor.run(planned.plan.quantile_sql, as_arrow=True)
    by_list = gateway_module._values_by_cell(listed, 1)
    by_row = gateway_module._values_by_cell(rows, 1)
    assert set(by_list) == set(by_row) and {("red",), ("blue",)} <= set(by_row)
    for key in by_row:
        np.testing.assert_array_equal(np.sort(by_list[key][0]), np.sort(by_row[key][0]))
    ungrouped, _ = gw._planned("SELECT MEDIAN(price) AS m FROM sales")
    assert ungrouped.listed_quantile_sql is None


def test_grouped_quantiles_still_answer_per_public_cell(gw):
    result = gw.query("SELECT colour, MEDIAN(price) AS m FROM sales GROUP BY colour",
                      analyst="q", epsilon=BIG)
    got = dict(result.rows)
    assert set(got) == {"red", "blue"}
    for value in got.values():
        assert 35 <= value <= 65


# ---------------------------------------------------------------- WHERE and public keys


def test_safe_where_conjuncts_are_bare_and_the_rest_stays_guarded(gw):
    plan, _ = gw._plan("SELECT COUNT(*) AS n FROM sales WHERE day >= DATE '2024-01-15' "
                       "AND colour IN ('red', 'green') AND price BETWEEN 10 AND 90 "
                       "AND CAST(code AS INT) > 3")
    where = plan.bounded_sql.split("WHERE", 1)[1].split("), per_unit", 1)[0].strip()
    assert where.startswith('"sales"."day" >= TRY_CAST(')
    assert "\"sales\".\"colour\" IN ('red', 'green') AND" in where
    assert "COALESCE(TRY(TRY_CAST(\"sales\".\"code\" AS INT) > 3), FALSE)" in where
    # a literal of another type than the column is not trusted
    plan, _ = gw._plan("SELECT COUNT(*) AS n FROM sales WHERE code > 3")
    assert 'TRY("sales"."code" > 3)' in plan.bounded_sql


def test_split_where_keeps_the_same_rows_and_never_fails_on_data(gw):
    frame = _frame()
    day = pd.Timestamp("2024-01-15").date()
    numeric = pd.to_numeric(frame["code"], errors="coerce")
    truth = int(((frame["day"] >= day) & (numeric > 3)).sum())
    result = gw.query("SELECT COUNT(*) AS n FROM sales WHERE day >= DATE '2024-01-15' "
                      "AND CAST(code AS INT) > 3", analyst="w", epsilon=BIG)
    assert result.rows[0][0] == pytest.approx(truth, abs=3)


def test_public_keys_are_filtered_by_the_release_not_in_sql(gw):
    plan, _ = gw._plan(SQL)
    assert "HAVING" not in plan.bounded_sql and " IN (" not in plan.bounded_sql
    raw = gw.executor.run(plan.bounded_sql).rows
    assert {row[0] for row in raw} == {"red", "blue", "green"}
    released = gw.query(SQL, analyst="late-filter", epsilon=BIG).rows
    assert {row[0] for row in released} == {"red", "blue"}   # 'green' is never released


def test_direct_two_level_aggregation_equals_count_distinct(tmp_path):
    meta = parse_dataset({
        "dataset": "shop", "budget": {"epsilon": 1e6, "delta": 1e-3},
        "query": {"epsilon": 1.0, "delta": 1e-7},
        "tables": {"sales": {"privacy_unit": "uid", "max_groups_per_unit": 3,
                             "max_rows_per_group": 2, "truncate_rows_per_unit": 2,
                             "columns": {"uid": "int", "code": "string",
                                         "price": {"type": "float", "lower": 0, "upper": 100,
                                                   "nullable": False}}}}})
    with Gateway(tmp_path / "h") as gw:
        gw.add_dataset(meta, {"sales": _frame().drop(columns=["colour", "day"])})
        # No row count in the query: the keys are released by an added count of units,
        # which the direct path computes in two GROUP BY levels.
        plan, _ = gw._plan("SELECT code, SUM(price) AS s FROM sales GROUP BY code")
        assert plan.direct_path and plan.keys.mode == "threshold"
        assert [m.kind for m in plan.measures] == ["units", "sum"]
        assert "DISTINCT" not in plan.bounded_sql
        got = gw.executor.run(plan.bounded_sql)
        src = plan.bounded_sql.split(", per_unit AS", 1)[0]
        kinds = {m.name: m.kind for m in plan.measures}
        aggregate = {"units": 'COUNT(DISTINCT "__unit")', "count": "COUNT(*)"}
        select = ", ".join(aggregate.get(kinds[name], f'SUM("v_{name}")') + f' AS "{name}"'
                           for name in got.columns[1:])
        reference = gw.executor.run(f'{src} SELECT "k0", {select} FROM src GROUP BY "k0"')
    assert sorted(got.rows) == sorted(reference.rows) and len(got.rows) > 5

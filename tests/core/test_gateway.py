"""End to end through the embedded Gateway: accuracy at large epsilon, key release,
caching, budgets, data-independent errors, sandbox, all-or-nothing loading."""
import math

import duckdb
import numpy as np
import pandas as pd
import pytest

from sqlgate.errors import BudgetExhausted, DataLoadError, ExecutionFailed, SqlgateError
from sqlgate.metadata import Budget

from tests.core.conftest import REGIONS, people_frame, people_metadata

BIG_EPSILON = 60.0


def frame(result):
    return result.to_pandas()


def test_results_are_close_to_truth_at_large_epsilon(gateway, truth):
    result = gateway.query(
        "SELECT region, COUNT(*) AS n, SUM(age) AS total, AVG(score) AS mean, "
        "VAR_POP(age) AS v, STDDEV(score) AS sd, COUNT(DISTINCT pid) AS units "
        "FROM people GROUP BY region ORDER BY region", analyst="a", epsilon=BIG_EPSILON)
    got = frame(result).set_index("region")
    expected = truth.groupby("region").agg(n=("pid", "size"), total=("age", "sum"),
                                           mean=("score", "mean"), sd=("score", "std"))
    expected["v"] = truth.groupby("region")["age"].var(ddof=0)
    for region in REGIONS:
        row, want = got.loc[region], expected.loc[region]
        assert abs(row.n - want.n) <= 5
        assert abs(row.units - want.n) <= 5
        assert abs(row.total - want.total) <= 600
        assert row["mean"] == pytest.approx(want["mean"], abs=0.05)
        assert row.sd == pytest.approx(want.sd, abs=0.1)
        assert row.v == pytest.approx(want.v, rel=0.03)
    assert [c.type for c in result.columns] == ["string", "int", "int", "float", "float", "float", "int"]
    assert result.cost.epsilon == BIG_EPSILON and not result.cached


def test_where_having_order_limit_and_arithmetic(gateway, truth):
    result = gateway.query(
        "SELECT region, COUNT(*) * 2 AS twice, SUM(age) / COUNT(*) AS ratio FROM people "
        "WHERE age >= 30 AND region <> 'west' GROUP BY region HAVING COUNT(*) > 10 "
        "ORDER BY twice DESC LIMIT 2", analyst="a", epsilon=BIG_EPSILON)
    got = frame(result)
    subset = truth[(truth.age >= 30) & (truth.region != "west")]
    counts = subset.groupby("region").size().sort_values(ascending=False)
    assert len(got) == 2
    assert list(got.region) == list(counts.index[:2])
    assert got.twice.iloc[0] == pytest.approx(2 * counts.iloc[0], abs=12)
    assert got.ratio.iloc[0] == pytest.approx(subset[subset.region == counts.index[0]].age.mean(), abs=1)


def test_public_keys_answer_every_key_even_when_absent(gateway):
    result = gateway.query("SELECT region, COUNT(*) AS n FROM people WHERE region = 'north' "
                           "GROUP BY region", analyst="a", epsilon=BIG_EPSILON)
    got = frame(result).set_index("region")
    assert set(got.index) == set(REGIONS)  # absent keys get noisy zeros, never dropped by data
    assert abs(got.loc["south", "n"]) <= 5


def test_threshold_release_drops_rare_keys(gateway, truth):
    result = gateway.query("SELECT city, COUNT(*) AS n FROM people GROUP BY city",
                           analyst="a", epsilon=2.0)
    cities = set(frame(result).city)
    assert "unique-city" not in cities
    assert {"big-a", "big-b"} <= cities
    assert result.cost.delta > 0 and result.key_release == "threshold"


def test_repeated_query_returns_the_cached_answer_free(gateway):
    sql = "SELECT region, COUNT(*) FROM people GROUP BY region"
    first = gateway.query(sql, analyst="a", epsilon=0.5)
    spent = gateway.budget("a", "town").spent_epsilon
    again = gateway.query(sql, analyst="a", epsilon=0.5)
    assert again.cached and again.rows == first.rows
    assert gateway.budget("a", "town").spent_epsilon == pytest.approx(spent)
    other = gateway.query(sql, analyst="b", epsilon=0.5)
    assert not other.cached  # another analyst's cache is never shared


def test_budget_is_refused_before_execution(gateway, monkeypatch):
    gateway.set_budget("poor", "town", Budget(0.3, 0.0), set_by="test")
    gateway.query("SELECT COUNT(*) FROM people", analyst="poor", epsilon=0.2)
    ran = []
    original = gateway.executor.run
    monkeypatch.setattr(gateway.executor, "run", lambda *a, **k: ran.append(1) or original(*a, **k))
    with pytest.raises(BudgetExhausted) as err:
        gateway.query("SELECT SUM(age) FROM people", analyst="poor", epsilon=0.2)
    assert not ran
    assert "remaining" in err.value.message
    assert err.value.sqlstate == "53400"


def test_explain_and_describe_spend_nothing_and_touch_no_data(gateway, monkeypatch):
    monkeypatch.setattr(gateway.executor, "run", lambda *a, **k: pytest.fail("data touched"))
    explanation = gateway.explain("SELECT region, COUNT(*), AVG(age) FROM people GROUP BY region",
                                  analyst="a", epsilon=1.0)
    assert explanation.cost.epsilon == 1.0
    count_column = explanation.columns[1]
    assert count_column.ci95 == pytest.approx(math.log(20) * 2 / 1.0, rel=1e-6)  # 2 measures
    columns = gateway.describe("SELECT region, COUNT(*) AS n FROM people GROUP BY region")
    assert [(c.name, c.type) for c in columns] == [("region", "string"), ("n", "int")]
    assert gateway.budget("a", "town").spent_epsilon == 0


@pytest.mark.parametrize("where", [
    "CAST(note AS INT) = 12",            # 'abc' cannot be cast
    "age * 100000000000000000 > 5",      # integer overflow
    "100 % (age - age) > 1",             # modulo by zero
    "CAST(note AS DATE) > DATE '2000-01-01'",
])
def test_data_dependent_failures_never_raise(gateway, where):
    result = gateway.query(f"SELECT COUNT(*) AS n FROM people WHERE {where}", analyst="a",
                           epsilon=BIG_EPSILON)
    assert len(result.rows) == 1


def test_engine_errors_are_generic(gateway, monkeypatch):
    monkeypatch.setattr(gateway.executor, "cursor", lambda: _Raiser())
    with pytest.raises(ExecutionFailed) as err:
        gateway.query("SELECT COUNT(*) FROM people", analyst="a")
    assert "secret" not in err.value.message


class _Raiser:
    def execute(self, sql):
        raise duckdb.ConversionException("Could not convert string 'secret-value-42' to INT32")

    def interrupt(self):
        pass

    def close(self):
        pass


def test_engine_is_sandboxed(gateway, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    with pytest.raises(ExecutionFailed):
        gateway.executor.run(f"SELECT * FROM read_csv('{secret}')")
    with pytest.raises(ExecutionFailed):
        gateway.executor.run("SET enable_external_access = true")


def test_bad_data_is_refused_and_nothing_is_half_loaded(gateway):
    before = [d.name for d in gateway.datasets()]
    good = people_frame(50)
    bad = good.copy()
    bad["age"] = bad["age"].astype(str)
    bad.loc[3, "age"] = "not-a-number"
    meta = people_metadata()
    from sqlgate.metadata import parse_dataset, dataset_to_dict
    two_tables = dataset_to_dict(meta)
    two_tables["dataset"] = "fresh"
    two_tables["tables"]["people2"] = two_tables["tables"]["people"]
    fresh = parse_dataset(two_tables)
    with pytest.raises(DataLoadError) as err:
        gateway.add_dataset(fresh, {"people": good, "people2": bad})
    assert "age" in err.value.message and "not-a-number" not in err.value.message
    assert [d.name for d in gateway.datasets()] == before
    with pytest.raises(DataLoadError):
        gateway.add_dataset(fresh, {"people": good, "people2": good.drop(columns=["score"])})
    # replacing an existing dataset with bad data keeps the old data
    with pytest.raises(DataLoadError):
        gateway.add_dataset(meta, {"people": bad}, replace=True)
    result = gateway.query("SELECT COUNT(*) AS n FROM people", analyst="a", epsilon=BIG_EPSILON)
    assert abs(result.rows[0][0] - 4000) < 10


def test_outliers_are_clamped_to_declared_bounds(tmp_path):
    from sqlgate.gateway import Gateway
    data = people_frame(1000)
    data.loc[0, "age"] = 10**9  # an outlier far past the declared upper bound of 100
    with Gateway(tmp_path / "d") as gw:
        gw.add_dataset(people_metadata(), {"people": data})
        result = gw.query("SELECT SUM(age) AS s FROM people", analyst="a", epsilon=BIG_EPSILON)
        clipped_truth = data.age.clip(0, 100).sum()
        assert abs(result.rows[0][0] - clipped_truth) < 100


def test_ingest_truncation_bounds_rows_per_unit(tmp_path):
    from sqlgate.gateway import Gateway
    data = pd.DataFrame({"pid": np.repeat(np.arange(100), 5), "age": 50, "score": 1.0,
                         "region": "north", "city": "x", "note": "n", "income": 1.0})
    with Gateway(tmp_path / "d") as gw:
        gw.add_dataset(people_metadata(truncate_rows_per_unit=2, max_rows_per_group=2),
                       {"people": data})
        result = gw.query("SELECT COUNT(*) AS n FROM people", analyst="a", epsilon=BIG_EPSILON)
        assert abs(result.rows[0][0] - 200) <= 3


def test_gateway_state_survives_restart(tmp_path):
    from sqlgate.gateway import Gateway
    home = tmp_path / "d"
    with Gateway(home) as gw:
        gw.add_dataset(people_metadata(), {"people": people_frame(300)})
        first = gw.query("SELECT COUNT(*) FROM people", analyst="a", epsilon=1.0)
    with Gateway(home) as gw:
        assert [d.name for d in gw.datasets()] == ["town"]
        again = gw.query("SELECT COUNT(*) FROM people", analyst="a", epsilon=1.0)
        assert again.cached and again.rows == first.rows
        assert gw.budget("a", "town").spent_epsilon == pytest.approx(1.0)


def test_errors_never_contain_data_values(gateway):
    secret_values = {"unique-city", "abc", "x7"}
    queries = ["SELECT city FROM people", "SELECT COUNT(*) FROM people WHERE city = 'unique-city' GROUP BY nope",
               "SELECT SUM(city) FROM people", "SELECT AVG(note) FROM people"]
    for sql in queries:
        with pytest.raises(SqlgateError) as err:
            gateway.query(sql, analyst="a")
        text = err.value.message
        assert not any(v in text for v in secret_values - set(sql.split("'")))


def test_l0_bound_keeps_a_different_subset_per_unit(tmp_path):
    """Every unit is in all 4 regions but may count in one: the kept region must vary by
    unit, so each region gets about a quarter (a key-only choice would give one region all)."""
    from sqlgate.gateway import Gateway
    units = 2000
    data = pd.DataFrame({"pid": np.repeat(np.arange(units), 4), "age": 30, "score": 1.0,
                         "region": REGIONS * units, "city": "x", "note": "n", "income": 1.0})
    with Gateway(tmp_path / "d") as gw:
        gw.add_dataset(people_metadata(max_groups_per_unit=1), {"people": data})
        got = gw.query("SELECT region, COUNT(*) AS n FROM people GROUP BY region",
                       analyst="a", epsilon=BIG_EPSILON).to_pandas()
    assert got.n.sum() == pytest.approx(units, abs=10)
    assert got.n.min() > units / 4 * 0.8 and got.n.max() < units / 4 * 1.2


@pytest.mark.parametrize("epsilon", [0.0, -1.0, 1e-320, 1e-7, 1e5, float("nan"), float("inf"),
                                     True, "1"])
def test_out_of_range_epsilon_is_refused_before_anything_runs(gateway, epsilon):
    from sqlgate.errors import InvalidParameter
    before = gateway.budget("eps", "town").queries
    for call in (gateway.query, gateway.explain):
        with pytest.raises(InvalidParameter) as err:
            call("SELECT COUNT(*) FROM people", analyst="eps", epsilon=epsilon)
        assert "epsilon must be a number from" in err.value.message
    assert gateway.budget("eps", "town").queries == before


@pytest.mark.parametrize("condition", [
    "x > 1.000000000000000000000000000001",
    "x BETWEEN 0.000000000000000000000000000001 AND 2",
    "x IN (1.000000000000000000000000000001, 2)",
    "x = y",
    "x > 99999999999999999999999999999999999999999",
])
def test_bare_where_comparisons_cannot_fail_on_large_values(condition):
    """A comparison left outside TRY() must not fail on any value: an int column against a
    decimal literal is cast to DECIMAL(38, s) by DuckDB and overflows on large values, which
    would make the query's failure depend on whether such a row exists."""
    from sqlgate.gateway import Gateway
    from sqlgate.metadata import parse_dataset

    meta = parse_dataset({"dataset": "big", "budget": {"epsilon": 100, "delta": 1e-6},
                          "tables": {"t": {"privacy_unit": "pid", "columns": {
                              "pid": "int", "x": "int", "y": "float"}}}})
    outcomes = []
    for largest in (5, 10 ** 15):
        with Gateway() as gw:
            gw.add_dataset(meta, {"t": pd.DataFrame({"pid": [1, 2], "x": [1, largest],
                                                     "y": [1.0, 2.0]})})
            try:
                gw.query(f"SELECT COUNT(*) FROM t WHERE {condition}", analyst="a")
                outcomes.append("answered")
            except SqlgateError as err:
                outcomes.append(type(err).__name__)
    assert outcomes == ["answered", "answered"]


def test_a_replace_during_a_query_refuses_it_before_noise_or_charge(gateway, monkeypatch):
    """A plan made for the old metadata must not release over the new data (its bounds may
    not hold there): the query re-checks the dataset version after the engine ran."""
    from sqlgate.errors import Conflict

    original = gateway.executor.run
    replaced = []

    def run_while_replacing(sql, **kwargs):
        if not replaced:
            replaced.append(1)
            gateway.add_dataset(people_metadata(max_rows_per_group=5),
                                {"people": people_frame(n=100)}, replace=True)
        return original(sql, **kwargs)

    monkeypatch.setattr(gateway.executor, "run", run_while_replacing)
    with pytest.raises(Conflict) as err:
        gateway.query("SELECT COUNT(*) FROM people", analyst="racer", epsilon=1.0)
    assert "replaced while the query ran" in err.value.message
    status = gateway.budget("racer", "town")
    assert status.queries == 0 and status.spent_epsilon == 0
    # The reservation made while the engine ran is refunded, and no answer is kept.
    [charge] = gateway.accountant.history("racer", "town")
    assert charge["refund_reason"] == "dataset replaced" and charge["refunded_at"]
    assert gateway.accountant.cached_answer("racer", "town", charge["query_key"]) is None
    monkeypatch.setattr(gateway.executor, "run", original)
    assert gateway.query("SELECT COUNT(*) FROM people", analyst="racer", epsilon=1.0).rows
    assert gateway.budget("racer", "town").queries == 1


def test_a_failed_replace_keeps_the_old_version_current(gateway):
    before = gateway.catalog.entry("town")
    with pytest.raises(SqlgateError):
        gateway.add_dataset(people_metadata(), {"people": pd.DataFrame({"pid": [None]})},
                            replace=True)
    assert gateway.catalog.is_current(before)
    assert gateway.query("SELECT COUNT(*) FROM people", analyst="after", epsilon=1.0).rows


def test_a_cancel_after_the_engine_ran_spends_nothing(gateway, monkeypatch):
    import threading

    from sqlgate.errors import QueryCanceled

    cancel = threading.Event()
    original = gateway.executor.run

    def run_then_cancel(sql, **kwargs):
        result = original(sql, **kwargs)
        cancel.set()            # the client went away just as the engine finished
        return result

    monkeypatch.setattr(gateway.executor, "run", run_then_cancel)
    with pytest.raises(QueryCanceled):
        gateway.query("SELECT COUNT(*) FROM people", analyst="gone", epsilon=1.0, cancel=cancel)
    assert gateway.budget("gone", "town").queries == 0

"""Joins on the unit, FK paths, public tables, CTEs, histogram bins and quantiles, end to end."""
import numpy as np
import pandas as pd
import pytest

from sqlgate.errors import PolicyRefused
from sqlgate.metadata import parse_dataset

BIG = 80.0
DEPTS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def clinic(tmp_path_factory):
    from sqlgate.gateway import Gateway
    rng = np.random.default_rng(3)
    n = 3000
    patients = pd.DataFrame({"pid": np.arange(n), "age": rng.integers(0, 100, n),
                             "weight": rng.uniform(40, 120, n).round(2)})
    visits_per = rng.integers(0, 4, n)
    visit_pid = np.repeat(np.arange(n), visits_per)
    visits = pd.DataFrame({"visit_id": np.arange(len(visit_pid)), "pid": visit_pid,
                           "dept": rng.choice(DEPTS, len(visit_pid)),
                           "cost": rng.uniform(0, 100, len(visit_pid)).round(2)})
    items_per = rng.integers(1, 3, len(visits))
    items = pd.DataFrame({"visit_id": np.repeat(visits.visit_id, items_per),
                          "qty": rng.integers(1, 5, int(items_per.sum()))})
    depts = pd.DataFrame({"dept": DEPTS, "floor": [1, 2, 2]})
    meta = parse_dataset({
        "dataset": "clinic", "budget": {"epsilon": 10000, "delta": 1e-4},
        "query": {"epsilon": 1.0, "delta": 1e-7},
        "tables": {
            "patients": {"privacy_unit": "pid", "columns": {
                "pid": "int", "age": {"type": "int", "lower": 0, "upper": 100, "nullable": False},
                "weight": {"type": "float", "lower": 30, "upper": 150, "nullable": False}}},
            "visits": {"privacy_unit": "pid", "max_groups_per_unit": 3, "max_rows_per_group": 3,
                       "columns": {"visit_id": "int", "pid": "int",
                                   "dept": {"type": "string", "public_keys": DEPTS},
                                   "cost": {"type": "float", "lower": 0, "upper": 100}}},
            "items": {"unit_via": {"column": "visit_id", "table": "visits", "references": "visit_id"},
                      "max_groups_per_unit": 3, "max_rows_per_group": 6,
                      "columns": {"visit_id": "int", "qty": {"type": "int", "lower": 0, "upper": 10}}},
            "depts": {"public": True, "columns": {"dept": "string",
                                                  "floor": {"type": "int", "public_keys": [1, 2]}}},
        }})
    gw = Gateway(tmp_path_factory.mktemp("clinic"))
    gw.add_dataset(meta, {"patients": patients, "visits": visits, "items": items, "depts": depts})
    yield gw, patients, visits, items, depts
    gw.close()


def q(gw, sql, analyst="a"):
    return gw.query(sql, analyst=analyst, epsilon=BIG).to_pandas()


def test_join_on_unit_matches_truth(clinic):
    gw, patients, visits, _, _ = clinic
    got = q(gw, "SELECT v.dept, COUNT(*) AS n, AVG(p.age) AS mean_age FROM visits v "
                "JOIN patients p ON v.pid = p.pid GROUP BY v.dept ORDER BY v.dept")
    joined = visits.merge(patients, on="pid")
    truth = joined.groupby("dept").agg(n=("pid", "size"), mean_age=("age", "mean"))
    for _, row in got.iterrows():
        assert row.n == pytest.approx(truth.loc[row.dept, "n"], abs=15)
        assert row.mean_age == pytest.approx(truth.loc[row.dept, "mean_age"], abs=1.0)


def test_foreign_key_path_and_public_table(clinic):
    gw, _, visits, items, depts = clinic
    got = q(gw, "SELECT d.floor, SUM(i.qty) AS total FROM items i "
                "JOIN visits v ON i.visit_id = v.visit_id JOIN depts d ON v.dept = d.dept "
                "GROUP BY d.floor ORDER BY d.floor")
    joined = items.merge(visits, on="visit_id").merge(depts, on="dept")
    # per-unit bounding may trim a few heavy units; the answer stays close to the truth
    truth = joined.groupby("floor").qty.sum()
    for _, row in got.iterrows():
        assert row.total == pytest.approx(truth.loc[row.floor], rel=0.05)


def test_fk_table_alone_is_refused(clinic):
    gw = clinic[0]
    with pytest.raises(PolicyRefused) as err:
        gw.query("SELECT COUNT(*) FROM items", analyst="a")
    assert "visits" in err.value.message


def test_cte_and_subquery(clinic):
    gw, patients, *_ = clinic
    got = q(gw, "WITH old AS (SELECT pid, age FROM patients WHERE age >= 60) "
                "SELECT COUNT(*) AS n FROM old")
    assert got.n.iloc[0] == pytest.approx((patients.age >= 60).sum(), abs=5)
    got = q(gw, "SELECT COUNT(*) AS n FROM (SELECT * FROM patients WHERE age < 10) t", analyst="b")
    assert got.n.iloc[0] == pytest.approx((patients.age < 10).sum(), abs=5)


def test_histogram_bins(clinic):
    gw, patients, *_ = clinic
    got = q(gw, "SELECT CASE WHEN age < 18 THEN 'child' WHEN age < 65 THEN 'adult' ELSE 'senior' END "
                "AS band, COUNT(*) AS n FROM patients GROUP BY band ORDER BY band").set_index("band")
    bands = pd.cut(patients.age, [-1, 17, 64, 200], labels=["child", "adult", "senior"])
    truth = bands.value_counts()
    for band in ["child", "adult", "senior"]:
        assert got.loc[band, "n"] == pytest.approx(truth[band], abs=5)
    got = q(gw, "SELECT width_bucket(age, 0, 100, 4) AS b, COUNT(*) AS n FROM patients GROUP BY 1")
    assert sorted(got.b) == [0, 1, 2, 3, 4, 5]
    assert got.set_index("b").loc[1, "n"] == pytest.approx((patients.age < 25).sum(), abs=5)


def test_quantiles_close_to_truth(clinic):
    gw, patients, visits, *_ = clinic
    got = q(gw, "SELECT MEDIAN(age) AS med, PERCENTILE_CONT(0.9) WITHIN GROUP (ORDER BY weight) AS p90, "
                "MIN(age) AS lo, MAX(weight) AS hi FROM patients")
    assert got.med.iloc[0] == pytest.approx(patients.age.median(), abs=3)
    assert got.p90.iloc[0] == pytest.approx(patients.weight.quantile(0.9), abs=3)
    assert got.lo.iloc[0] <= 3 and got.hi.iloc[0] >= 110
    by_dept = q(gw, "SELECT dept, QUANTILE_CONT(cost, 0.5) AS med FROM visits GROUP BY dept")
    truth = visits.groupby("dept").cost.median()
    for _, row in by_dept.iterrows():
        assert row.med == pytest.approx(truth[row.dept], abs=4)

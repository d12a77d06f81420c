"""The lazy frame compiles pandas-like verbs to SQL the gateway accepts (no server needed)."""
from __future__ import annotations

import datetime as dt

import pytest

from sqlgate.client.frame import Expr, LazyFrame, TableInfo
from sqlgate.errors import InvalidParameter, UndefinedColumn
from sqlgate.metadata import dataset_to_dict, parse_dataset_text
from tests.client.live import HOSPITAL_YAML, patients_frame

META = parse_dataset_text(HOSPITAL_YAML)
SPEC = dataset_to_dict(META)["tables"]["patients"]
INFO = TableInfo("hospital", "patients", SPEC["columns"], SPEC["privacy_unit"])


@pytest.fixture
def t():
    return LazyFrame(client=None, info=INFO)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    from sqlgate.gateway import Gateway
    gw = Gateway(tmp_path_factory.mktemp("frame-gw"))
    gw.add_dataset(META, {"patients": patients_frame(200)})
    yield gw
    gw.close()


def test_filters_and_grouping_compile_to_sql(t):
    adults = t[(t.age >= 18) & (t["sex"] == "f") | ~t.region.isin(["north", "east"])]
    q = adults.groupby("region").agg(n=("age", "count"), mean_bmi=("bmi", "mean"))
    assert q.sql == (
        "SELECT region, COUNT(age) AS n, AVG(bmi) AS mean_bmi FROM hospital.patients "
        "WHERE ((age >= 18) AND (sex = 'f')) OR (NOT (region IN ('north', 'east'))) "
        "GROUP BY region ORDER BY region")
    assert t[t.age.between(20, 30)][["age"]].mean().sql == \
        "SELECT AVG(age) AS age FROM hospital.patients WHERE age BETWEEN 20 AND 30"
    assert t[t.note.isna()].count().sql == \
        "SELECT COUNT(*) AS count FROM hospital.patients WHERE note IS NULL"
    # Successive filters AND together.
    assert t[t.age > 1][t.age < 9].size().sql.endswith("WHERE (age > 1) AND (age < 9)")


def test_values_are_literals_not_sql(t):
    assert t[t.note == "it's'; DROP TABLE x; --"].count().sql.endswith(
        "WHERE note = 'it''s''; DROP TABLE x; --'")
    assert t[t.age > 2.5].count().sql.endswith("WHERE age > 2.5")
    assert "CAST('2024-02-29' AS DATE)" in t[t.note == dt.date(2024, 2, 29)].count().sql
    assert t[t.note.like("a%")].count().sql.endswith("WHERE note LIKE 'a%'")
    # Python asks the right operand (a Column, a subclass) first: same condition, mirrored.
    assert t[(t.bmi * 2 + 1) > t.age].count().sql.endswith("WHERE age < ((bmi * 2) + 1)")
    with pytest.raises(InvalidParameter):
        t[t.bmi > float("nan")]
    with pytest.raises(InvalidParameter):
        t[t.bmi > object()]
    with pytest.raises(TypeError, match="&, \\| and ~"):
        t[(t.age > 1) and (t.age < 5)]


def test_aggregation_verbs(t):
    assert t.mean().sql == "SELECT AVG(age) AS age, AVG(bmi) AS bmi FROM hospital.patients"
    assert t[["age", "bmi"]].std().sql == \
        "SELECT STDDEV(age) AS age, STDDEV(bmi) AS bmi FROM hospital.patients"
    assert t.age.sum().sql == "SELECT SUM(age) AS age FROM hospital.patients"
    assert t.bmi.var().sql == "SELECT VAR_SAMP(bmi) AS bmi FROM hospital.patients"
    assert t.age.quantile([0.25, 0.9]).sql == (
        "SELECT PERCENTILE_CONT(0.25) WITHIN GROUP (ORDER BY age) AS age_q25, "
        "PERCENTILE_CONT(0.9) WITHIN GROUP (ORDER BY age) AS age_q90 FROM hospital.patients")
    assert t.region.value_counts().sql == (
        "SELECT region, COUNT(*) AS count FROM hospital.patients GROUP BY region "
        "ORDER BY count DESC, region")
    assert t.groupby(["sex", "region"])["bmi"].mean().sql == (
        "SELECT sex, region, AVG(bmi) AS bmi FROM hospital.patients GROUP BY sex, region "
        "ORDER BY sex, region")
    assert t.groupby("sex").agg({"age": "mean", "bmi": ["min", "max"]}).sql == (
        "SELECT sex, AVG(age) AS age, MIN(bmi) AS bmi_min, MAX(bmi) AS bmi_max "
        "FROM hospital.patients GROUP BY sex ORDER BY sex")
    assert t.groupby("sex").size().sql == \
        "SELECT sex, COUNT(*) AS count FROM hospital.patients GROUP BY sex ORDER BY sex"
    assert t.groupby("sex").median().sql.startswith(
        "SELECT sex, PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY age) AS age")


def test_bad_verbs_raise_clear_errors(t):
    with pytest.raises(UndefinedColumn, match="'height'"):
        t["height"]
    with pytest.raises(AttributeError):
        t.height
    with pytest.raises(InvalidParameter, match="unknown aggregation"):
        t.groupby("sex").agg(x=("age", "mode"))
    with pytest.raises(InvalidParameter, match="between 0 and 1"):
        t.age.quantile(1.5)
    with pytest.raises(InvalidParameter, match="exactly one column"):
        t[["age", "bmi"]].value_counts()
    with pytest.raises(InvalidParameter):
        t[[]]
    with pytest.raises(InvalidParameter):
        t.filter("age > 3")
    assert isinstance(t.age > 3, Expr)


def test_compiled_queries_are_accepted_by_the_gateway(t, gateway):
    """Every verb's SQL plans on the real rewriter (describe: no data, no budget)."""
    queries = [
        t[(t.age >= 18) & (t.sex == "f")].groupby("region").agg(n=("age", "count"),
                                                                 mean_bmi=("bmi", "mean")),
        t.mean(), t.count(), t.size(), t.age.sum(), t.bmi.std(), t.bmi.var(),
        t.age.quantile([0.25, 0.75]), t.age.median(), t.age.min(), t.age.max(),
        t.region.value_counts(), t.groupby(["sex", "region"]).size(),
        t[t.region.isin(["north"]) | t.age.between(1, 9)].groupby("sex")["bmi"].mean(),
        t[t.note.isna()].count(),
    ]
    for query in queries:
        columns = gateway.describe(query.sql)
        assert columns, query.sql
    status = gateway.budget("anyone", "hospital")
    assert status.queries == 0

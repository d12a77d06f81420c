"""`sqlgate.connect` against a running server: frames, raw SQL, budgets, mock, approvals."""
from __future__ import annotations

import socket

import pandas as pd
import pytest

import sqlgate
from sqlgate.client import ConnectionFailed, ResultGone
from sqlgate.errors import (AuthenticationFailed, BudgetExhausted, InvalidParameter,
                            NotFound, PolicyRefused, SqlSyntaxError, UndefinedTable)
from sqlgate.metadata import Budget
from tests.client.live import SECRET_NOTE


@pytest.fixture(scope="module")
def ann(live):
    client = sqlgate.connect(live.url, token=live.tokens["ann"])
    yield client
    client.close()


@pytest.fixture(scope="module")
def olga(live):
    client = sqlgate.connect(live.url, user="olga", password=live.password("olga"))
    yield client
    client.close()


def spent(live, user="ann"):
    status = live.state.gateway.budget(user, "hospital")
    return status.spent_epsilon, status.queries


def test_catalog(ann):
    assert ann.tables() == ["hospital.patients"]
    assert [d["name"] for d in ann.datasets()] == ["hospital"]
    meta = ann.dataset("hospital")
    assert meta["tables"]["patients"]["columns"]["age"]["upper"] == 100
    frame = ann.table("hospital.patients")
    assert frame.columns == ["pid", "age", "bmi", "region", "sex", "note"]
    assert ann.table("PATIENTS").info == frame.info
    with pytest.raises(UndefinedTable):
        ann.table("visits")
    with pytest.raises(NotFound):
        ann.dataset("shop")


def test_frame_to_pandas_carries_noise_metadata(ann, live):
    t = ann.table("patients")
    before = spent(live)
    query = t[t.age >= 18].groupby("region").agg(n=("age", "count"), mean_bmi=("bmi", "mean"))
    explanation = query.explain()
    assert explanation.cost["epsilon"] == 0.5 and explanation.ci95["n"] > 0
    assert "n: 95% CI ±" in str(explanation)
    assert spent(live) == before                    # explain spends nothing
    df = query.to_pandas()
    assert list(df.columns) == ["region", "n", "mean_bmi"]
    assert list(df["region"]) == ["east", "north", "south", "west"]
    assert df["n"].dtype.kind == "i" and df["mean_bmi"].dtype.kind == "f"
    meta = df.attrs["sqlgate"]
    assert meta["cost"]["epsilon"] == 0.5 and meta["cached"] is False
    assert set(meta["ci95"]) == {"n", "mean_bmi"} and meta["query_id"]
    assert spent(live)[1] == before[1] + 1
    again = query.to_pandas()
    assert again.attrs["sqlgate"]["cached"] is True
    pd.testing.assert_frame_equal(again, df)
    assert spent(live)[1] == before[1] + 1


def test_series_verbs_run(ann):
    t = ann.table("patients")
    assert list(t.age.mean().to_pandas().columns) == ["age"]
    counts = t.sex.value_counts().to_pandas()
    assert list(counts.columns) == ["sex", "count"] and set(counts["sex"]) == {"f", "m"}
    quantiles = t.age.quantile([0.25, 0.75]).to_pandas(epsilon=0.25)
    assert list(quantiles.columns) == ["age_q25", "age_q75"]
    assert 0 <= quantiles["age_q25"][0] <= quantiles["age_q75"][0] <= 100
    assert t[t.region == "north"].count().to_pandas().attrs["sqlgate"]["cost"]["epsilon"] == 0.5


def test_raw_sql_and_typed_errors(ann, live):
    df = ann.sql("SELECT sex, COUNT(*) AS n FROM patients GROUP BY sex", epsilon=0.25)
    assert df.attrs["sqlgate"]["cost"]["epsilon"] == 0.25
    before = spent(live)
    with pytest.raises(PolicyRefused) as err:
        ann.table("patients")[["note"]].to_pandas()
    assert err.value.code == "refused_by_policy" and err.value.sqlstate == "42501"
    assert SECRET_NOTE not in str(err.value)
    with pytest.raises(SqlSyntaxError):
        ann.sql("SELEC 1 FROM patients")
    with pytest.raises(UndefinedTable):
        ann.sql("SELECT COUNT(*) FROM visits")
    with pytest.raises(InvalidParameter):
        ann.sql("SELECT COUNT(*) FROM patients", epsilon=-1)
    with pytest.raises(InvalidParameter):
        ann.sql("   ")
    assert spent(live) == before


def test_budget_exhaustion_has_public_details(olga, live):
    live.state.gateway.set_budget("olga", "hospital", Budget(0.3, 1e-6), set_by="test")
    with pytest.raises(BudgetExhausted) as err:
        olga.sql("SELECT COUNT(*) FROM patients WHERE age > 50")
    assert err.value.http_status == 402 and err.value.sqlstate == "53400"
    assert "remaining_epsilon" in err.value.details
    budget = olga.budget("hospital")
    assert budget["total"]["epsilon"] == 0.3 and budget["queries"] == 0


def test_budget_frame(ann):
    frame = ann.budget()
    assert list(frame["dataset"]) == ["hospital"]
    assert frame["spent_epsilon"][0] > 0
    assert ann.budget("hospital")["remaining_epsilon"] == pytest.approx(
        frame["remaining_epsilon"][0])
    with pytest.raises(UndefinedTable):
        ann.budget("shop")


def test_mock_rows_come_from_metadata(ann):
    mock = ann.mock("patients", rows=25, seed=1)
    assert len(mock) == 25 and list(mock.columns)[:3] == ["pid", "age", "bmi"]
    assert mock.attrs["sqlgate"]["mock"] is True
    assert mock["age"].between(0, 100).all()
    assert SECRET_NOTE not in mock.to_string()


def test_approval_workflow_releases_once(ann, olga):
    request = ann.request("exact", "SELECT region, COUNT(*) AS n FROM patients GROUP BY region",
                          "quarterly report")
    assert request.info["dataset"] == "hospital" and request.status() == "pending"
    preview = olga.get_request(request.id).mock_run(rows=50)
    assert preview.attrs["sqlgate"]["mock"] is True
    olga.get_request(request.id).approve("fine for the report")
    assert request.wait(timeout_s=30, poll_s=0.05) == "done"
    result = request.result()
    assert sorted(result["region"]) == ["east", "north", "south", "west"]
    assert result["n"].sum() == 2000 and result.attrs["sqlgate"]["exact"] is True
    assert request.result() is result         # kept by the object, not fetched again
    with pytest.raises(ResultGone):
        ann.get_request(request.id).result()
    denied = ann.request("sample", "SELECT age FROM patients", "look at rows",
                         dataset="hospital", spec={"rows": 5})
    olga.get_request(denied.id).deny("not needed")
    assert denied.wait(timeout_s=5, poll_s=0.05) == "denied"
    assert [r.id for r in ann.requests(status="denied")] == [denied.id]
    with pytest.raises(InvalidParameter):
        ann.request("everything", "SELECT 1", "x")


def test_connection_problems():
    with pytest.raises(InvalidParameter):
        sqlgate.connect("127.0.0.1:8765", token="x")
    with pytest.raises(InvalidParameter):
        sqlgate.connect("http://127.0.0.1:1")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = sqlgate.connect(f"http://127.0.0.1:{port}", token="x", timeout_s=5)
    with pytest.raises(ConnectionFailed):
        client.tables()


def test_bad_credentials(live):
    with pytest.raises(AuthenticationFailed):
        sqlgate.connect(live.url, token="sqg_wrong").tables()
    with pytest.raises(AuthenticationFailed):
        sqlgate.connect(live.url, user="ann", password="not-her-password").tables()

"""Training jobs end to end on a Gateway: learning at eps <= 3, charging, progress, cancel."""
from __future__ import annotations

import math
import threading

import pytest

from tests.torch_bridge._deps import require_torch_stack

require_torch_stack()

from sqlgate.errors import PolicyRefused  # noqa: E402
from sqlgate.gateway import Gateway  # noqa: E402
from sqlgate.metadata import Budget  # noqa: E402
from tests.torch_bridge.clinic import clinic_frames, clinic_metadata, training_spec  # noqa: E402
from tests.torch_bridge.conftest import accuracy  # noqa: E402
from torch_bridge.jobs import ResultAlreadyFetched, TrainingJobs, train, validate_job  # noqa: E402
from torch_bridge.spec import parse_training_spec  # noqa: E402
from torch_bridge.weights import CONTENT_TYPE, from_safetensors  # noqa: E402


def test_logistic_job_beats_chance_at_epsilon_2_5_and_charges_once(clinic_gateway, holdout):
    x, y, majority = holdout
    spec = parse_training_spec(training_spec(epsilon=2.5, epochs=5))
    seen = []
    result = train(clinic_gateway, "clinic", "alice", spec, job_id="job-logistic",
                   on_progress=seen.append)
    tensors, info = from_safetensors(result.weights)
    assert set(tensors) == {"weight", "bias"}
    acc = accuracy(tensors, spec, x, y)
    assert acc > majority + 0.10, (acc, majority)
    # Exactly one charge of the full target, made for this job.
    charges = [c for c in clinic_gateway.accountant.history("alice", "clinic")]
    assert len(charges) == 1
    status = clinic_gateway.budget("alice", "clinic")
    assert status.spent_epsilon == pytest.approx(2.5) and status.spent_delta == pytest.approx(1e-5)
    # Progress: every epoch, epsilon spent grows and ends within the target.
    assert [p.epoch for p in seen] == [1, 2, 3, 4, 5]
    spent = [p.epsilon_spent for p in seen]
    assert spent == sorted(spent) and spent[-1] <= 2.5 and spent[0] > 0
    assert all(p.loss is not None and math.isfinite(p.loss) for p in seen)
    # Public facts travel with the weights; no data values.
    assert info["privacy"]["epsilon"] <= 2.5 and info["privacy"]["unit_level"] is True
    assert info["layout"]["inputs"][0] == "age"
    assert result.summary["steps"] == info["privacy"]["steps"]


def test_mlp_job_in_a_thread_with_fetch_once(clinic_gateway, holdout):
    x, y, majority = holdout
    jobs = TrainingJobs(clinic_gateway)
    spec = parse_training_spec(training_spec(model={"type": "mlp", "hidden": [16]},
                                             epsilon=3.0, epochs=4, lr=0.03))
    progress = []
    job = jobs.submit(spec, dataset="clinic", analyst="bob",
                      on_progress=lambda j: progress.append(j.to_dict()["progress"]))
    assert job.wait(300)
    assert job.status == "done", (job.error_code, job.error_message)
    assert job.charged and job.to_dict()["result_available"]
    assert [p["epoch"] for p in progress] == [1, 2, 3, 4]
    result = job.take_weights()
    assert result.content_type == CONTENT_TYPE
    with pytest.raises(ResultAlreadyFetched):
        job.take_weights()
    tensors, _ = from_safetensors(result.weights)
    assert accuracy(tensors, spec, x, y) > majority + 0.10
    assert jobs.get(job.id) is job
    assert clinic_gateway.budget("bob", "clinic").spent_epsilon == pytest.approx(3.0)


def test_cancel_stops_the_job_and_keeps_the_charge(clinic_gateway):
    jobs = TrainingJobs(clinic_gateway)
    spec = parse_training_spec(training_spec(epochs=200, epsilon=1.0))
    first_epoch = threading.Event()
    job = jobs.submit(spec, dataset="clinic", analyst="carol",
                      on_progress=lambda j: first_epoch.set())
    assert first_epoch.wait(120)
    jobs.cancel(job.id)
    assert job.wait(120)
    assert job.status == "canceled" and job.error_code == "query_canceled"
    assert "not refunded" in job.error_message
    assert job.progress.epoch < 200
    with pytest.raises(Exception):
        job.take_weights()
    assert clinic_gateway.budget("carol", "clinic").spent_epsilon == pytest.approx(1.0)


def test_over_budget_job_fails_before_reading_data(clinic_gateway, monkeypatch):
    clinic_gateway.set_budget("dave", "clinic", Budget(1.0, 1e-4), set_by="owner")
    read = []
    monkeypatch.setattr(clinic_gateway, "run_exact", lambda *a, **k: read.append(a))
    jobs = TrainingJobs(clinic_gateway)
    job = jobs.submit(parse_training_spec(training_spec(epsilon=2.0)), dataset="clinic",
                      analyst="dave")
    assert job.wait(60)
    assert job.status == "failed" and job.error_code == "budget_exhausted"
    assert "remaining epsilon=1" in job.error_message
    assert not job.charged and read == []
    assert clinic_gateway.budget("dave", "clinic").queries == 0


def test_invalid_job_fails_without_charge(clinic_gateway):
    spec = parse_training_spec(training_spec(sql="SELECT income, at_risk FROM clinic.patients"))
    jobs = TrainingJobs(clinic_gateway)
    job = jobs.submit(spec, dataset="clinic", analyst="erin")
    assert job.wait(60)
    assert job.status == "failed" and job.error_code == "invalid_parameter"
    assert "income" in job.error_message
    assert clinic_gateway.budget("erin", "clinic").queries == 0
    with pytest.raises(PolicyRefused):
        validate_job(clinic_gateway, "clinic",
                     parse_training_spec(training_spec(sql="SELECT * FROM clinic.patients")))


def test_zcdp_dataset_is_charged_as_approximate_dp(tmp_path, holdout):
    with Gateway(tmp_path) as gw:
        gw.add_dataset(clinic_metadata("zclinic", mechanism="gaussian"), clinic_frames(1500))
        spec = parse_training_spec(training_spec(
            sql="SELECT age, bmi, smoker, region, sex, at_risk FROM zclinic.patients",
            epsilon=1.0, epochs=1))
        train(gw, "zclinic", "alice", spec, job_id="z")
        status = gw.budget("alice", "zclinic")
        # (eps, delta)-DP is delta-approximate (eps^2/2)-zCDP (Bun & Steinke Prop. 1.13).
        assert status.measure == "zcdp"
        assert status.spent_rho == pytest.approx(0.5)
        assert status.remaining_delta == pytest.approx(0.5e-4 - 1e-5)


def test_demo_hospital_diabetes_model_ranks_far_better_than_chance(tmp_path):
    """The demo's own data (sqlgate.demo): diabetes is rare (~25%), so accuracy cannot beat
    the majority class by 10 points even for the true model; AUC (chance = 0.5) is the bar."""
    import torch
    from scipy.stats import rankdata

    from sqlgate.demo import hospital_frames, load_hospital
    from torch_bridge.data import UNIT_ALIAS, encode_units, plan_training_query
    from torch_bridge.models import build_model

    with Gateway(tmp_path) as gw:
        load_hospital(gw, patients=5000)
        spec = parse_training_spec({
            "model": {"type": "logistic"}, "label": "diabetes", "task": "binary",
            "sql": "SELECT age, bmi, smoker, sex, region, diabetes FROM hospital.patients",
            "optimizer": "adam", "lr": 0.05, "epochs": 5, "batch_size": 256,
            "max_grad_norm": 1.0, "epsilon": 3.0, "delta": 1e-7})
        tensors, _ = from_safetensors(train(gw, "hospital", "alice", spec, job_id="demo").weights)
        query = plan_training_query(gw.dataset("hospital"), spec)
    fresh = hospital_frames(3000, seed=123)["patients"]
    columns = [UNIT_ALIAS, "age", "bmi", "smoker", "sex", "region", "diabetes"]
    data = encode_units(query, columns, list(fresh[["patient_id"] + columns[1:]]
                                             .itertuples(index=False, name=None)))
    model = build_model(spec.model, query.input_width, 1)
    model.load_state_dict(tensors)
    with torch.no_grad():
        scores = model(torch.from_numpy(data.x[:, 0])).numpy().reshape(-1)
    positive = data.y[:, 0] == 1
    ranks = rankdata(scores)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    auc = (ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    assert auc > 0.70, auc


def test_multi_row_units_and_an_empty_selection_train_without_error(clinic_gateway):
    # visits: up to 4 rows per patient, each patient clipped as one unit.
    spec = parse_training_spec(training_spec(
        sql="SELECT cost, urgent FROM clinic.visits", label="urgent",
        model={"type": "mlp", "hidden": [4]}, epochs=1, epsilon=1.0))
    result = train(clinic_gateway, "clinic", "frank", spec, job_id="visits")
    tensors, info = from_safetensors(result.weights)
    assert info["layout"]["rows_per_unit"] == 4 and set(tensors) == {
        "0.weight", "0.bias", "2.weight", "2.bias"}
    # Selecting nobody still runs (pure noise), and is still charged: no data-dependent exit.
    empty = parse_training_spec(training_spec(
        sql="SELECT age, bmi, smoker, region, sex, at_risk FROM clinic.patients WHERE age > 500",
        epochs=1, epsilon=1.0))
    result = train(clinic_gateway, "clinic", "frank", empty, job_id="empty")
    assert result.summary["steps"] >= 1
    assert clinic_gateway.budget("frank", "clinic").queries == 2

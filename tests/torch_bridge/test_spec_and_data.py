"""Spec validation, training-SQL validation and per-unit encoding. Needs no torch."""
from __future__ import annotations

import base64
import subprocess
import sys

import numpy as np
import pytest

from sqlgate.errors import InvalidParameter, PolicyRefused, SqlgateError
from tests.torch_bridge.clinic import TRAIN_SQL, clinic_metadata, training_spec
from torch_bridge.data import UNIT_ALIAS, encode_units, plan_training_query
from torch_bridge.spec import SpecError, parse_training_spec


# ---------------------------------------------------------------------- spec


def test_valid_spec_gets_task_defaults():
    spec = parse_training_spec(training_spec())
    assert spec.loss == "bce" and spec.optimizer == "adam" and spec.label == "at_risk"
    assert spec.model.type == "logistic" and spec.epsilon == 2.0 and spec.delta == 1e-5
    mlp = parse_training_spec(training_spec(model={"type": "mlp", "hidden": [16, 8]},
                                            task="regression", label="score", loss=None))
    assert mlp.model.hidden == (16, 8) and mlp.loss == "mse"


@pytest.mark.parametrize("change, field", [
    ({"epochs": 0}, "epochs"),
    ({"epochs": 2.5}, "epochs"),
    ({"batch_size": True}, "batch_size"),
    ({"epsilon": -1}, "epsilon"),
    ({"epsilon": float("nan")}, "epsilon"),
    ({"delta": 0}, "delta"),
    ({"delta": 0.5}, "delta"),
    ({"max_grad_norm": 0}, "max_grad_norm"),
    ({"task": "clustering"}, "task"),
    ({"loss": "mse"}, "loss"),               # not a binary-classification loss
    ({"optimizer": "lbfgs"}, "optimizer"),
    ({"model": {"type": "mlp"}}, "model.hidden"),
    ({"model": {"type": "mlp", "hidden": [0]}}, "model.hidden[0]"),
    ({"model": {"type": "mlp", "hidden": [4], "activation": "swish"}}, "model.activation"),
    ({"model": {"type": "logistic", "hidden": [4]}}, "model.hidden"),
    ({"model": {"type": "pickle"}}, "model.type"),
    ({"model": {"type": "torchscript", "data": "%%%"}}, "model.data"),
    ({"model": {"type": "torchscript",
                "data": base64.b64encode(b"\x80\x04pickle").decode()}}, "model.data"),
    ({"label": ""}, "label"),
    ({"sql": ""}, "sql"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_spec_fields_are_named(change, field):
    raw = training_spec(**change)
    if change.get("loss", 0) is None:
        raw.pop("loss")
    with pytest.raises(SpecError) as info:
        parse_training_spec(raw)
    assert info.value.field == field
    assert f"'{field}'" in info.value.message
    assert info.value.http_status == 400


def test_spec_sql_must_match_request_sql():
    raw = training_spec()
    assert parse_training_spec(raw, sql=TRAIN_SQL).sql == TRAIN_SQL
    raw.pop("sql")
    assert parse_training_spec(raw, sql=TRAIN_SQL).sql == TRAIN_SQL
    with pytest.raises(SpecError) as info:
        parse_training_spec(training_spec(), sql="SELECT age, at_risk FROM clinic.patients")
    assert info.value.field == "sql"


def test_spec_is_not_a_mapping():
    with pytest.raises(SpecError):
        parse_training_spec(["model"])


# ---------------------------------------------------------------------- training SQL


def plan(sql: str, **spec):
    return plan_training_query(clinic_metadata(), parse_training_spec(training_spec(sql=sql, **spec)))


def test_plan_encodes_from_metadata_and_adds_the_unit():
    query = plan(TRAIN_SQL)
    assert [f.name for f in query.features] == ["age", "bmi", "smoker", "region", "sex"]
    assert [f.kind for f in query.features] == ["numeric", "numeric", "bool", "onehot", "onehot"]
    assert query.input_width == 1 + 1 + 1 + 4 + 2
    assert query.label.classes == (False, True) and query.label.outputs == 1
    assert query.rows_per_unit == 1
    assert UNIT_ALIAS in query.engine_sql and '"patient_id"' in query.engine_sql
    layout = query.layout()
    assert layout["inputs"][3:7] == ["region=north", "region=south", "region=east", "region=west"]


def test_where_is_kept_and_visits_get_k_rows():
    query = plan("SELECT cost, urgent FROM clinic.visits WHERE cost > 10", label="urgent")
    assert "WHERE" in query.engine_sql.upper() and "10" in query.engine_sql
    assert query.rows_per_unit == 4           # max_groups_per_unit * max_rows_per_group
    assert plan("SELECT cost, urgent FROM visits", label="urgent",
                max_rows_per_unit=2).rows_per_unit == 2


@pytest.mark.parametrize("sql, error", [
    ("SELECT * FROM clinic.patients", PolicyRefused),
    ("SELECT age + 1, at_risk FROM clinic.patients", PolicyRefused),
    ("SELECT age AS patient_id, at_risk FROM clinic.patients", PolicyRefused),
    ("SELECT patient_id, at_risk FROM clinic.patients", PolicyRefused),      # unit as feature
    ("SELECT p.age, at_risk FROM clinic.patients p JOIN clinic.visits v "
     "ON p.patient_id = v.patient_id", PolicyRefused),
    ("SELECT age, at_risk FROM clinic.patients GROUP BY age, at_risk", PolicyRefused),
    ("SELECT age, at_risk FROM clinic.patients LIMIT 10", PolicyRefused),
    ("SELECT DISTINCT age, at_risk FROM clinic.patients", PolicyRefused),
    ("SELECT age, at_risk FROM clinic.patients WHERE age IN (SELECT age FROM clinic.patients)",
     PolicyRefused),
    ("SELECT age, at_risk FROM other.patients", PolicyRefused),
    ("SELECT income, at_risk FROM clinic.patients", SpecError),             # no bounds
    ("SELECT nothing, at_risk FROM clinic.patients", SpecError),
    ("SELECT age, age, at_risk FROM clinic.patients", SpecError),
    ("SELECT age, bmi FROM clinic.patients", SpecError),                    # label missing
    ("SELECT at_risk FROM clinic.patients", SpecError),                     # no feature
    ("SELECT age, at_risk FROM clinic.nope", SpecError),
    ("DELETE FROM clinic.patients", SqlgateError),
])
def test_bad_training_sql_is_refused_before_any_data(sql, error):
    with pytest.raises(error):
        plan(sql)


def test_labels_must_fit_the_task():
    with pytest.raises(SpecError) as info:
        plan("SELECT age, grade FROM clinic.patients", label="grade")          # 3 classes
    assert info.value.field == "label"
    multi = plan("SELECT age, grade FROM clinic.patients", label="grade", task="multiclass")
    assert multi.label.outputs == 3
    with pytest.raises(SpecError):
        plan("SELECT age, income FROM clinic.patients", label="income", task="regression")
    reg = plan("SELECT age, score FROM clinic.patients", label="score", task="regression")
    assert (reg.label.lower, reg.label.upper) == (0.0, 10.0)


# ---------------------------------------------------------------------- per-unit encoding


def test_encoding_uses_bounds_never_data_and_groups_rows_per_unit():
    query = plan("SELECT cost, urgent FROM clinic.visits", label="urgent", max_rows_per_unit=2)
    columns = [UNIT_ALIAS, "cost", "urgent"]
    rows = [(7, 500.0, True), (7, 5000.0, False), (7, 100.0, True),   # 3 rows: kept 2
            (9, -3.0, None),                                          # NULL label: skipped
            (9, None, False),                                         # NULL feature -> 0
            (11, 1000.0, True)]
    data = encode_units(query, columns, rows)
    assert data.units == 3 and data.x.shape == (3, 2, 1)
    np.testing.assert_allclose(data.x[0, :, 0], [0.5, 1.0])     # clamped to upper=1000
    np.testing.assert_array_equal(data.mask, [[1, 1], [1, 0], [1, 0]])
    np.testing.assert_array_equal(data.y[0], [1, 0])
    assert data.x[1, 0, 0] == 0.0 and data.y[1, 0] == 0              # the NULL-feature row
    assert data.x[2, 0, 0] == 1.0


def test_one_hot_uses_the_declared_key_set():
    query = plan(TRAIN_SQL)
    columns = [UNIT_ALIAS, "age", "bmi", "smoker", "region", "sex", "at_risk"]
    rows = [(1, 50, 32.5, True, "east", "M", True), (2, 150, 10.0, False, "mars", None, False)]
    data = encode_units(query, columns, rows)
    np.testing.assert_allclose(data.x[0, 0], [0.5, 0.5, 1, 0, 0, 1, 0, 0, 1], atol=1e-6)
    np.testing.assert_allclose(data.x[1, 0], [1.0, 0.0, 0, 0, 0, 0, 0, 0, 0])   # unknown keys
    np.testing.assert_array_equal(data.y[:, 0], [1, 0])


def test_core_and_spec_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['opacus'] = None; "
            "sys.modules['safetensors'] = None; import sqlgate, server, accountant; "
            "import torch_bridge, torch_bridge.spec, torch_bridge.data, torch_bridge.validate; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


def test_invalid_parameter_is_the_base_error():
    assert issubclass(SpecError, InvalidParameter)

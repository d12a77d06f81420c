"""A small hospital-like dataset with a learnable label, for torch_bridge tests and bench.

`at_risk` depends on age, bmi, smoker and region through a logistic model with a strong
signal (Bayes accuracy ~0.9, about half positive), so "clearly better than chance" is a
meaningful bar. Each patient also has 0-4 visits, for the per-unit (user-level) tests.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from sqlgate.metadata import DatasetMeta, parse_dataset

REGIONS = ["north", "south", "east", "west"]
REGION_EFFECT = {"north": 0.8, "south": -0.8, "east": 0.4, "west": -0.4}
FEATURES = ["age", "bmi", "smoker", "region", "sex"]


def clinic_metadata(name: str = "clinic", *, epsilon: float = 10.0, delta: float = 1e-4,
                    mechanism: str = "laplace") -> DatasetMeta:
    return parse_dataset({
        "dataset": name,
        "budget": {"epsilon": epsilon, "delta": delta},
        "query": {"epsilon": 0.5, "delta": 1e-7, "mechanism": mechanism},
        "tables": {
            "patients": {
                "privacy_unit": "patient_id",
                "columns": {
                    "patient_id": {"type": "int"},
                    "age": {"type": "int", "lower": 0, "upper": 100, "nullable": False},
                    "bmi": {"type": "float", "lower": 15.0, "upper": 50.0},
                    "smoker": {"type": "bool", "public_keys": [True, False]},
                    "region": {"type": "string", "public_keys": REGIONS},
                    "sex": {"type": "string", "public_keys": ["F", "M"]},
                    "income": {"type": "float"},
                    "at_risk": {"type": "bool", "public_keys": [True, False]},
                    "grade": {"type": "string", "public_keys": ["low", "mid", "high"]},
                    "score": {"type": "float", "lower": 0.0, "upper": 10.0},
                },
            },
            "visits": {
                "privacy_unit": "patient_id",
                "max_groups_per_unit": 2,
                "max_rows_per_group": 2,
                "columns": {
                    "visit_id": {"type": "int"},
                    "patient_id": {"type": "int"},
                    "cost": {"type": "float", "lower": 0.0, "upper": 1000.0},
                    "urgent": {"type": "bool"},
                },
            },
        },
    })


def clinic_frames(patients: int = 4000, seed: int = 1, first_id: int = 1) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = np.arange(first_id, first_id + patients)
    age = rng.integers(18, 90, patients)
    bmi = np.round(rng.uniform(17, 45, patients), 1)
    smoker = rng.random(patients) < 0.3
    region = rng.choice(REGIONS, patients)
    sex = rng.choice(["F", "M"], patients)
    effect = np.array([REGION_EFFECT[r] for r in region])
    logit = 3.0 * ((age - 54) / 36 + (bmi - 31) / 14) + 1.2 * (smoker - 0.3) + effect
    at_risk = rng.random(patients) < 1 / (1 + np.exp(-logit))
    score = np.clip(2 + 6 * (age - 18) / 72 + rng.normal(0, 0.5, patients), 0, 10)
    grade = np.where(score < 4, "low", np.where(score < 6.5, "mid", "high"))
    frame = pd.DataFrame({"patient_id": ids, "age": age, "bmi": bmi, "smoker": smoker,
                          "region": region, "sex": sex,
                          "income": np.round(rng.lognormal(10, 0.5, patients), 2),
                          "at_risk": at_risk, "grade": grade, "score": np.round(score, 3)})
    counts = rng.integers(0, 5, patients)
    owner = np.repeat(ids, counts)
    visits = pd.DataFrame({"visit_id": np.arange(1, len(owner) + 1), "patient_id": owner,
                           "cost": np.round(rng.uniform(0, 1200, len(owner)), 2),
                           "urgent": rng.random(len(owner)) < 0.2})
    return {"patients": frame, "visits": visits}


def design_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The same encoding the job uses (metadata bounds and key order), for evaluation."""
    cols = [np.clip(frame["age"].to_numpy(float), 0, 100) / 100.0,
            (np.clip(frame["bmi"].to_numpy(float), 15, 50) - 15) / 35.0,
            frame["smoker"].to_numpy(bool).astype(float)]
    cols += [(frame["region"] == r).to_numpy(float) for r in REGIONS]
    cols += [(frame["sex"] == s).to_numpy(float) for s in ("F", "M")]
    return np.stack(cols, axis=1).astype(np.float32)


TRAIN_SQL = "SELECT age, bmi, smoker, region, sex, at_risk FROM clinic.patients"


def training_spec(**overrides) -> dict:
    spec = {"model": {"type": "logistic"}, "sql": TRAIN_SQL, "label": "at_risk",
            "task": "binary", "optimizer": "adam", "lr": 0.05, "epochs": 4,
            "batch_size": 256, "max_grad_norm": 1.0, "epsilon": 2.0, "delta": 1e-5}
    spec.update(overrides)
    return spec

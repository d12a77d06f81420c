"""The demo domain: a generated hospital dataset and TPC-H orders, with their metadata."""
from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from sqlgate.metadata import DatasetMeta, parse_dataset

REGIONS = ["north", "south", "east", "west"]
DEPARTMENTS = ["cardiology", "oncology", "emergency", "pediatrics", "orthopedics"]

HOSPITAL_METADATA = {
    "dataset": "hospital",
    "description": "Generated patients and their visits (one privacy unit = one patient).",
    "budget": {"epsilon": 5.0, "delta": 1e-6},
    "query": {"epsilon": 0.5, "delta": 1e-7, "mechanism": "laplace"},
    "tables": {
        "patients": {
            "privacy_unit": "patient_id",
            "max_groups_per_unit": 1,
            "max_rows_per_group": 1,
            "columns": {
                "patient_id": {"type": "int", "unique": True},  # one row per patient
                "age": {"type": "int", "lower": 0, "upper": 100, "nullable": False},
                "sex": {"type": "string", "public_keys": ["F", "M"]},
                "region": {"type": "string", "public_keys": REGIONS},
                "bmi": {"type": "float", "lower": 15.0, "upper": 50.0, "nullable": False},
                "smoker": {"type": "bool", "public_keys": [True, False]},
                "diabetes": {"type": "int", "lower": 0, "upper": 1, "public_keys": [0, 1]},
                "income": {"type": "float"},
            },
        },
        "visits": {
            "privacy_unit": "patient_id",
            "max_groups_per_unit": 3,
            "max_rows_per_group": 4,
            "columns": {
                "visit_id": {"type": "int"},
                "patient_id": {"type": "int"},
                "department": {"type": "string", "public_keys": DEPARTMENTS},
                "cost": {"type": "float", "lower": 0.0, "upper": 5000.0, "nullable": False},
                "visit_date": {"type": "date"},
                "diagnosis": {"type": "string"},
            },
        },
    },
}

TPCH_METADATA = {
    "dataset": "tpch",
    "description": "TPC-H orders and customers; the privacy unit is the customer.",
    "budget": {"epsilon": 5.0, "delta": 1e-6},
    "query": {"epsilon": 0.5, "delta": 1e-7, "mechanism": "laplace"},
    "tables": {
        "orders": {
            "privacy_unit": "o_custkey",
            "max_groups_per_unit": 2,
            "max_rows_per_group": 5,
            "columns": {
                "o_orderkey": {"type": "int"},
                "o_custkey": {"type": "int"},
                "o_orderstatus": {"type": "string", "public_keys": ["F", "O", "P"]},
                "o_totalprice": {"type": "float", "lower": 0.0, "upper": 400000.0, "nullable": False},
                "o_orderdate": {"type": "date"},
                "o_orderpriority": {"type": "string", "public_keys": [
                    "1-URGENT", "2-HIGH", "3-MEDIUM", "4-NOT SPECIFIED", "5-LOW"]},
                "o_shippriority": {"type": "int", "lower": 0, "upper": 1},
            },
        },
        "customer": {
            "privacy_unit": "c_custkey",
            "columns": {
                "c_custkey": {"type": "int", "unique": True},
                "c_nationkey": {"type": "int", "public_keys": list(range(25))},
                "c_acctbal": {"type": "float", "lower": -1000.0, "upper": 10000.0},
                "c_mktsegment": {"type": "string", "public_keys": [
                    "AUTOMOBILE", "BUILDING", "FURNITURE", "HOUSEHOLD", "MACHINERY"]},
            },
        },
    },
}

EXAMPLE_QUERIES = [
    ("hospital", "SELECT region, COUNT(*) AS patients, AVG(age) AS mean_age FROM patients GROUP BY region ORDER BY region"),
    ("hospital", "SELECT smoker, AVG(bmi) AS mean_bmi, STDDEV(bmi) AS sd_bmi FROM patients GROUP BY smoker"),
    ("hospital", "SELECT department, COUNT(DISTINCT patient_id) AS patients, SUM(cost) AS total_cost FROM visits GROUP BY department ORDER BY total_cost DESC"),
    ("hospital", "SELECT diagnosis, COUNT(*) AS visits FROM visits GROUP BY diagnosis"),
    ("tpch", "SELECT o_orderpriority, COUNT(*) AS orders, AVG(o_totalprice) AS avg_price FROM orders WHERE o_orderdate >= DATE '1995-01-01' GROUP BY o_orderpriority ORDER BY o_orderpriority"),
]


def hospital_metadata() -> DatasetMeta:
    return parse_dataset(HOSPITAL_METADATA)


def tpch_metadata() -> DatasetMeta:
    return parse_dataset(TPCH_METADATA)


def hospital_frames(patients: int = 5000, seed: int = 7) -> dict[str, pd.DataFrame]:
    """Patients with a real diabetes signal (age, bmi, smoker) and 0-12 visits each."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, patients + 1)
    age = np.clip(rng.normal(48, 18, patients).round(), 0, 99).astype(int)
    sex = rng.choice(["F", "M"], patients)
    region = rng.choice(REGIONS, patients, p=[0.4, 0.3, 0.2, 0.1])
    smoker = rng.random(patients) < 0.22
    bmi = np.clip(rng.normal(27 + 2 * smoker, 5, patients), 15, 50).round(1)
    logit = -9.0 + 0.06 * age + 0.17 * bmi + 0.8 * smoker
    diabetes = (rng.random(patients) < 1 / (1 + np.exp(-logit))).astype(int)
    income = np.round(rng.lognormal(10.6, 0.5, patients), 2)
    patients_frame = pd.DataFrame({
        "patient_id": ids, "age": age, "sex": sex, "region": region, "bmi": bmi,
        "smoker": smoker, "diabetes": diabetes, "income": income})
    counts = rng.poisson(2.5, patients).clip(0, 12)
    owner = np.repeat(ids, counts)
    n_visits = len(owner)
    start = dt.date(2022, 1, 1)
    diagnoses = np.array(["hypertension", "diabetes", "fracture", "influenza", "asthma",
                          "migraine"] + [f"rare-{i}" for i in range(40)])
    diag_p = np.array([0.25, 0.15, 0.15, 0.2, 0.1, 0.1] + [0.05 / 40] * 40)
    visits_frame = pd.DataFrame({
        "visit_id": np.arange(1, n_visits + 1),
        "patient_id": owner,
        "department": rng.choice(DEPARTMENTS, n_visits),
        "cost": np.round(rng.gamma(2.0, 400.0, n_visits), 2),
        "visit_date": [start + dt.timedelta(days=int(d)) for d in rng.integers(0, 1000, n_visits)],
        "diagnosis": rng.choice(diagnoses, n_visits, p=diag_p / diag_p.sum()),
    })
    return {"patients": patients_frame, "visits": visits_frame}


def generate_tpch(scale: float, out_dir: Path, tables=("orders", "customer")) -> dict[str, Path]:
    """TPC-H tables as Parquet, made by the tpchgen-cli package."""
    exe = shutil.which("tpchgen-cli")
    if exe is None:
        raise RuntimeError("tpchgen-cli is not installed: pip install 'sqlgate[tpch]'")
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([exe, "parquet", "-s", str(scale), f"--tables={','.join(tables)}",
                    f"--output-dir={out_dir}"], check=True, capture_output=True)
    return {t: out_dir / f"{t}.parquet" for t in tables}


def load_tpch(gateway, scale: float = 0.01, *, replace: bool = True) -> DatasetMeta:
    with tempfile.TemporaryDirectory(prefix="sqlgate-tpch-") as tmp:
        paths = generate_tpch(scale, Path(tmp))
        return gateway.add_dataset(tpch_metadata(), paths, replace=replace)


def load_hospital(gateway, patients: int = 5000, *, replace: bool = True) -> DatasetMeta:
    return gateway.add_dataset(hospital_metadata(), hospital_frames(patients), replace=replace)

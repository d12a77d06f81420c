"""A dataset and a query list shared by the PostgreSQL and Spark backend tests.

Unit-level columns (region, city) are constant per unit and units touch at most 3 groups of the
visit-level columns (ward, age bins) while max_groups_per_unit is 4, so the L0 selection never
binds and every engine must return exactly DuckDB's bounded result. The test where it binds
checks the bound itself instead (engines may keep different groups).
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from rewriter import plan_query
from sqlgate.gateway import Gateway
from sqlgate.metadata import parse_dataset
from sqlgate.stored_sums import without_stored_sums

REGIONS = ["north", "south", "east", "west"]
WARDS = ["cardio", "neuro", "onco", "ortho"]


def shop_metadata(**table_overrides):
    table = {
        "privacy_unit": "pid",
        "max_groups_per_unit": 4,
        "max_rows_per_group": 2,
        "columns": {
            "pid": {"type": "int"},
            "age": {"type": "int", "lower": 0, "upper": 100, "nullable": False},
            "score": {"type": "float", "lower": 0.0, "upper": 10.0},
            "region": {"type": "string", "public_keys": REGIONS},
            "ward": {"type": "string", "public_keys": WARDS},
            "city": {"type": "string"},
            "note": {"type": "string"},
            "flag": {"type": "bool"},
            "day": {"type": "date"},
        },
    }
    table.update(table_overrides)
    return parse_dataset({
        "dataset": "shop",
        "budget": {"epsilon": 10000.0, "delta": 1e-4},
        "query": {"epsilon": 1.0, "delta": 1e-6, "mechanism": "laplace"},
        "tables": {
            "visits": table,
            "zones": {"public": True, "columns": {
                "region": {"type": "string"},
                "zone": {"type": "string", "public_keys": ["cold", "warm"]}}},
        },
    })


def shop_frames(n_units: int = 1500, seed: int = 3) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    rows_per_unit = rng.choice([1, 1, 2, 3], n_units)
    pid = np.repeat(np.arange(n_units), rows_per_unit)
    n = len(pid)
    unit_region = rng.choice(REGIONS, n_units)
    unit_city = rng.choice(["big-a", "big-b", "Bay", "tiny"], n_units, p=[0.5, 0.3, 0.15, 0.05])
    score = rng.uniform(-1, 11, n).round(3)  # some outside the declared bounds: clamped
    score[rng.random(n) < 0.05] = np.nan  # nullable: NULL scores
    start = dt.date(2023, 6, 1)
    visits = pd.DataFrame({
        "pid": pid,
        "age": rng.integers(0, 100, n),
        "score": score,
        "region": np.repeat(unit_region, rows_per_unit),
        "ward": rng.choice(WARDS, n),
        "city": np.repeat(unit_city, rows_per_unit),
        "note": rng.choice(["12", "abc", "7", "", None], n),
        "flag": rng.random(n) < 0.4,
        "day": [start + dt.timedelta(days=int(d)) for d in rng.integers(0, 400, n)],
    })
    zones = pd.DataFrame({"region": REGIONS, "zone": ["cold", "warm", "warm", "cold"]})
    return {"visits": visits, "zones": zones}


# (sql, engines on which the bounded result must equal DuckDB's exactly)
BOTH = ("postgres", "spark")
QUERIES = [
    ("SELECT COUNT(*) FROM visits", BOTH),
    ("SELECT region, COUNT(*), SUM(age), AVG(score) FROM visits GROUP BY region", BOTH),
    ("SELECT ward, VARIANCE(score), COUNT(DISTINCT pid), STDDEV(age) FROM visits GROUP BY ward", BOTH),
    ("SELECT COUNT(*), SUM(score) FROM visits WHERE CAST(note AS INT) > 5", BOTH),
    ("SELECT COUNT(*) FROM visits WHERE div(age, age - age) > 1 OR region = 'north'", BOTH),
    ("SELECT COUNT(*) FROM visits WHERE lower(city) LIKE 'b%' AND age BETWEEN 20 AND 60", BOTH),
    ("SELECT city, COUNT(*) FROM visits GROUP BY city", BOTH),
    ("SELECT width_bucket(age, 0, 100, 4) AS b, COUNT(*) FROM visits GROUP BY b", BOTH),
    ("SELECT CASE WHEN age < 40 THEN 'young' ELSE 'old' END AS g, SUM(score) FROM visits GROUP BY g", BOTH),
    ("SELECT COUNT(*) FROM visits WHERE EXTRACT(year FROM day) = 2024 AND flag", BOTH),
    ("SELECT region, COUNT(*) FROM visits WHERE score * 2 > 9 OR note IS NULL GROUP BY region", BOTH),
    ("SELECT z.zone, COUNT(*), AVG(v.age) FROM visits v JOIN zones z ON v.region = z.region GROUP BY z.zone", BOTH),
    # Casting a double to INT rounds half-to-even in DuckDB and PostgreSQL, truncates in Spark.
    ("SELECT COUNT(*) FROM visits WHERE CAST(score AS INT) = 3", ("postgres",)),
    # TRY semantics: an error anywhere in the predicate (here: modulo by zero at age = 50)
    # makes the whole predicate NULL, even where the other side of OR is true.
    ("SELECT COUNT(*) FROM visits WHERE 100 % (age - 50) = 0 OR region = 'north'", BOTH),
    # ... but only where DuckDB evaluates the failing operation (CASE branches are lazy).
    ("SELECT COUNT(*) FROM visits WHERE CASE WHEN age <> 50 THEN 100 % (age - 50) ELSE 0 END = 0",
     BOTH),
    # Overflow is an error, so NULL, on every engine (DuckDB's optimizer would otherwise move
    # the constant and evaluate `age > 0` instead; Spark would wrap around).
    ("SELECT COUNT(*) FROM visits WHERE age * 9223372036854775807 > 0", BOTH),
    ("SELECT COUNT(*) FROM visits WHERE -age * 9223372036854775807 < 0 OR flag", BOTH),
    ("SELECT COUNT(*) FROM visits WHERE age - 9223372036854775807 - 100 < 0", BOTH),
    # `/` is floating-point division: x/0 is +-inf or NaN (NaN sorts above every number).
    ("SELECT COUNT(*) FROM visits WHERE age / (age - age) > 1e308", BOTH),
    ("SELECT COUNT(*) FROM visits WHERE (age - 50) / (age - 50) = 1 OR age / 3 > 20.5", BOTH),
]


def normalized(rows) -> list[tuple]:
    def plain(v):
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v
    return sorted((tuple(plain(v) for v in row) for row in rows), key=repr)


@pytest.fixture(scope="module")
def reference():
    """The DuckDB gateway holding the same data: plans and the reference bounded results."""
    gateway = Gateway()
    gateway.add_dataset(shop_metadata(), shop_frames())
    yield gateway
    gateway.close()


def plan_for(gateway: Gateway, sql: str):
    """The plan every engine can run: without the sums the DuckDB catalog stored beside
    its tables (sqlgate/stored_sums.py), which other engines do not hold."""
    return plan_query(sql, without_stored_sums(gateway.catalog.resolve_table))

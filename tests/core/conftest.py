import numpy as np
import pandas as pd
import pytest

from sqlgate.metadata import parse_dataset

REGIONS = ["north", "south", "east", "west"]


def people_metadata(**table_overrides):
    table = {
        "privacy_unit": "pid",
        "max_groups_per_unit": 1,
        "max_rows_per_group": 1,
        "columns": {
            "pid": {"type": "int"},
            "age": {"type": "int", "lower": 0, "upper": 100, "nullable": False},
            "score": {"type": "float", "lower": 0.0, "upper": 10.0, "nullable": False},
            "region": {"type": "string", "public_keys": REGIONS},
            "city": {"type": "string"},
            "note": {"type": "string"},
            "income": {"type": "float"},
        },
    }
    table.update(table_overrides)
    return parse_dataset({
        "dataset": "town",
        "budget": {"epsilon": 1000.0, "delta": 1e-5},
        "query": {"epsilon": 1.0, "delta": 1e-7, "mechanism": "laplace"},
        "tables": {"people": table},
    })


def people_frame(n=4000, seed=1):
    rng = np.random.default_rng(seed)
    cities = np.array(["big-a"] * 6 + ["big-b"] * 3 + ["tiny"])
    return pd.DataFrame({
        "pid": np.arange(n),
        "age": rng.integers(0, 90, n),
        "score": rng.uniform(0, 10, n).round(3),
        "region": rng.choice(REGIONS, n),
        "city": np.where(np.arange(n) == 0, "unique-city", rng.choice(cities, n)),
        "note": rng.choice(["12", "x7", "abc"], n),
        "income": rng.lognormal(10, 1, n),
    })


@pytest.fixture
def gateway(tmp_path):
    from sqlgate.gateway import Gateway
    gw = Gateway(tmp_path / "domain")
    gw.add_dataset(people_metadata(), {"people": people_frame()})
    yield gw
    gw.close()


@pytest.fixture
def truth():
    return people_frame()

"""A domain with users of every role, two datasets and an HTTP client per user.

Datasets: `hospital` (owned by olga; analysts ann and bob may query it) and `shop` (owned by
oscar; nobody else). Data is small so the suite stays fast.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

warnings.filterwarnings("ignore", message=".*httpx.*starlette.testclient.*")

from starlette.testclient import TestClient  # noqa: E402

from server.http.app import create_app  # noqa: E402
from server.state import ServerState  # noqa: E402
from sqlgate.metadata import parse_dataset_text  # noqa: E402

REGIONS = ["north", "south", "east", "west"]
SECRET_NOTE = "TOPSECRET-7731"     # a private value that must never show up in an answer

HOSPITAL_YAML = """
dataset: hospital
description: patients of a small hospital
budget: {epsilon: 50.0, delta: 1.0e-6}
query: {epsilon: 0.5, delta: 1.0e-7, mechanism: laplace}
tables:
  patients:
    source: patients.csv
    privacy_unit: pid
    max_groups_per_unit: 1
    max_rows_per_group: 1
    columns:
      pid: int
      age: {type: int, lower: 0, upper: 100, nullable: false}
      region: {type: string, public_keys: [north, south, east, west]}
      note: string
"""

SHOP_YAML = """
dataset: shop
budget: {epsilon: 5.0, delta: 1.0e-6}
tables:
  orders:
    source: orders.parquet
    privacy_unit: customer
    max_groups_per_unit: 2
    max_rows_per_group: 3
    columns:
      customer: int
      amount: {type: float, lower: 0, upper: 500}
      channel: {type: string, public_keys: [web, store]}
"""


def patients_frame(n: int = 400, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "pid": np.arange(n),
        "age": rng.integers(0, 90, n),
        "region": rng.choice(REGIONS, n),
        "note": np.where(np.arange(n) == 7, SECRET_NOTE, rng.choice(["a", "b"], n)),
    })


def orders_frame(n: int = 300, seed: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "customer": rng.integers(0, 100, n),
        "amount": rng.uniform(0, 400, n).round(2),
        "channel": rng.choice(["web", "store"], n),
    })


@dataclass
class Domain:
    state: ServerState
    app: object
    tokens: dict[str, str]

    def client(self, user: str | None = None, **kwargs) -> TestClient:
        # A loopback peer, as a local client really is (TestClient's default peer name
        # "testclient" is no address, so password logins over its plain HTTP are refused).
        kwargs.setdefault("client", ("127.0.0.1", 50000))
        client = TestClient(self.app, raise_server_exceptions=False, **kwargs)
        if user is not None:
            client.headers["Authorization"] = f"Bearer {self.tokens[user]}"
        return client


def make_domain(home, **options) -> Domain:
    state = ServerState.open(home, **options)
    users = state.users
    roles = {"root": "admin", "olga": "owner", "oscar": "owner", "ann": "analyst",
             "bob": "analyst", "eve": "analyst"}
    tokens = {}
    for name, role in roles.items():
        users.create_user(name, role, password=f"{name}-password")
        tokens[name] = users.issue_token(name)
    state.gateway.add_dataset(parse_dataset_text(HOSPITAL_YAML), {"patients": patients_frame()})
    state.gateway.add_dataset(parse_dataset_text(SHOP_YAML), {"orders": orders_frame()})
    users.grant("olga", "hospital", "own")
    users.grant("oscar", "shop", "own")
    users.grant("ann", "hospital", "query")
    users.grant("bob", "hospital", "query")
    return Domain(state, create_app(state), tokens)


@pytest.fixture
def domain(tmp_path):
    d = make_domain(tmp_path / "home")
    yield d
    d.state.close()


@pytest.fixture
def clients(domain):
    return {name: domain.client(name) for name in domain.tokens}


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["sqlstate"]
    assert SECRET_NOTE not in response.text
    return error

"""Noise drawn while the engine runs (sqlgate/noise_ahead.py): OpenDP's measurement only ever
sees zeros on that path, the sum is what the measurement would return, and a draw that is
never used costs nothing."""
from __future__ import annotations

import threading

import numpy as np
import opendp.prelude as dp
import pandas as pd
import pytest

from sqlgate import release
from sqlgate.errors import QueryCanceled
from sqlgate.gateway import Gateway
from sqlgate.metadata import parse_dataset

dp.enable_features("contrib")


def _meta():
    table = {"privacy_unit": "uid", "max_groups_per_unit": 1, "max_rows_per_group": 3,
             "truncate_rows_per_unit": 3,
             "columns": {"uid": "int",
                         "colour": {"type": "string", "public_keys": ["red", "blue", "grey"]},
                         "shop": "string",
                         "price": {"type": "float", "lower": 0, "upper": 100,
                                   "nullable": False}}}
    return parse_dataset({"dataset": "shop", "budget": {"epsilon": 1e6, "delta": 1e-3},
                          "query": {"epsilon": 1.0, "delta": 1e-7}, "tables": {"sales": table}})


def _frame(n_units=400):
    rng = np.random.default_rng(3)
    uid = np.repeat(np.arange(n_units), 2)
    return pd.DataFrame({"uid": uid, "colour": rng.choice(["red", "blue"], len(uid)),
                         "shop": rng.choice(["a", "b"], len(uid)),
                         "price": rng.uniform(0, 100, len(uid))})


@pytest.fixture
def gw(tmp_path):
    gateway = Gateway(tmp_path / "home")
    gateway.add_dataset(_meta(), {"sales": _frame()})
    yield gateway
    gateway.close()


@pytest.fixture
def seen(monkeypatch):
    """Every vector OpenDP's vector measurements were invoked on, by thread name."""
    calls = []
    real = release.noisy_vector

    def spy(spec, values):
        calls.append((threading.current_thread().name, list(values)))
        return real(spec, values)

    monkeypatch.setattr(release, "noisy_vector", spy)
    return calls


def test_known_cells_draw_on_zeros_on_a_worker(gw, seen):
    result = gw.query("SELECT colour, COUNT(*) AS n, SUM(price) AS s FROM sales GROUP BY colour",
                      analyst="a", epsilon=100.0)
    assert len(seen) == 2  # one draw per measure, each over the three public cells
    for thread, values in seen:
        assert thread.startswith("sqlgate-noise") and values == [0, 0, 0]
    got = {row[0]: row[1] for row in result.rows}
    truth = _frame().groupby("colour").size()
    assert got["grey"] == pytest.approx(0, abs=5)
    for colour in ("red", "blue"):
        assert got[colour] == pytest.approx(truth[colour], abs=5)
    seen.clear()
    gw.query("SELECT COUNT(*) AS n FROM sales", analyst="a", epsilon=100.0)
    assert [values for _, values in seen] == [[0]]


def test_keys_found_in_the_data_keep_drawing_after_the_engine(gw, seen):
    gw.query("SELECT shop, COUNT(*) AS n FROM sales GROUP BY shop", analyst="a", epsilon=100.0)
    assert not any(thread.startswith("sqlgate-noise") for thread, _ in seen)


def test_the_sum_is_what_the_measurement_returns():
    # x + Z saturating at the i64 limits, inputs clamped like release.noisy_vector's.
    assert release.add_drawn([5, None, -7], [10, -3, 0]) == [15, -3, -7]
    assert release.add_drawn([2**70], [2**63]) == [2**63 - 1]
    assert release.add_drawn([-(2**70)], [-(2**63)]) == [-(2**63)]
    with pytest.raises(ValueError):
        release.add_drawn([1, 2], [0])
    # OpenDP's integer mechanism is additive and saturating: the same contract.
    measurement = dp.m.make_laplace(dp.vector_domain(dp.atom_domain(T="i64")),
                                    dp.l1_distance(T="i64"), scale=1.0)
    assert measurement([2**63 - 1] * 50).count(2**63 - 1) >= 20


def test_an_unused_draw_costs_nothing(gw, monkeypatch):
    cancel = threading.Event()
    real_run = gw.executor.run

    def cancelled_run(sql, **kwargs):
        cancel.set()
        return real_run(sql, **kwargs)

    monkeypatch.setattr(gw.executor, "run", cancelled_run)
    with pytest.raises(QueryCanceled):
        gw.query("SELECT colour, COUNT(*) AS n FROM sales GROUP BY colour", analyst="c",
                 epsilon=1.0, cancel=cancel)
    assert gw.budget("c", "shop").queries == 0


def test_close_stops_the_workers(tmp_path):
    gateway = Gateway(tmp_path / "home")
    gateway.add_dataset(_meta(), {"sales": _frame(20)})
    gateway.query("SELECT COUNT(*) AS n FROM sales", analyst="a")
    ahead = gateway._noise_ahead
    pool = ahead._pool
    assert pool is not None
    plan, entry = gateway._plan("SELECT COUNT(*) AS n FROM sales")
    release_plan = gateway._calibrate(plan, entry.meta, 1.0)
    gateway.close()
    assert ahead.submit(plan, release_plan) is None
    with pytest.raises(RuntimeError):
        pool.submit(print)  # shut down

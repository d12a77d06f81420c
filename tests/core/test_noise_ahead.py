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


# ---------------------------------------------------------------- grouped quantiles side by side


def _median_of(candidates):
    from rewriter.plan import QuantileMeasure
    return QuantileMeasure("q0", "x", 0.5, candidates[0], candidates[-1], tuple(candidates), 1, 1)


def test_run_all_keeps_order_and_waits_for_every_task_before_raising():
    from sqlgate.noise_ahead import NoiseAhead
    ahead = NoiseAhead(workers=3)
    try:
        assert ahead.run_all([lambda i=i: i * i for i in range(7)]) == [i * i for i in range(7)]
        finished = threading.Event()
        started = threading.Event()

        def slow():
            started.set()
            finished.wait(0.2)
            finished.set()
            return 1

        def fails():
            started.wait(5)
            raise ValueError("cell failed")

        with pytest.raises(ValueError, match="cell failed"):
            ahead.run_all([slow, fails])
        assert finished.is_set()  # no task still running once the error is raised
    finally:
        ahead.close()
    # closed: the tasks run in the caller's thread, still in order
    names = ahead.run_all([lambda: threading.current_thread().name] * 2)
    assert names == [threading.current_thread().name] * 2


def test_grouped_quantiles_run_on_the_runner_and_keep_cell_order():
    from sqlgate.noise_ahead import NoiseAhead
    q = _median_of(tuple(float(i) for i in range(0, 101)))
    spec = release._quantile(q, 200.0)  # sharp: each cell's median is its best candidate
    cells = [np.full(301, float(v)) for v in (90, 10, 55, 0, 100)] + [np.empty(0)]
    calls = []
    ahead = NoiseAhead(workers=3)
    try:
        def runner(tasks):
            calls.append(len(tasks))
            return ahead.run_all(tasks)

        released = release.noisy_quantiles(q, spec, cells, run_cells=runner)
    finally:
        ahead.close()
    assert calls == [6]
    assert released[:5] == [90.0, 10.0, 55.0, 0.0, 100.0]
    assert released[5] in q.candidates       # an empty cell still gets a (random) candidate
    # one cell: no hand-off at all
    assert release.noisy_quantiles(q, spec, cells[:1], run_cells=runner) == [90.0]
    assert calls == [6]


def test_many_threshold_keys_are_released_in_parts_with_the_same_distribution(gw):
    from sqlgate.noise_ahead import NoiseAhead
    plan, entry = gw._plan("SELECT shop, COUNT(*) AS n FROM sales GROUP BY shop")
    release_plan = gw._calibrate(plan, entry.meta, 1.0)
    threshold = release_plan.threshold.threshold
    far = 10 * threshold
    # keys far above (always kept, near their count), far below (never kept), and at the
    # threshold itself (kept about half the time: the rate compares the two paths)
    counts = {f"hi{i}": far for i in range(300)}
    counts |= {f"lo{i}": 0 for i in range(300)}
    counts |= {f"at{i}": threshold for i in range(3000)}
    parts = []
    ahead = NoiseAhead(workers=3)
    try:
        def runner(tasks):
            parts.append(len(tasks))
            return ahead.run_all(tasks)

        split = release.threshold_keys(release_plan, counts, run_cells=runner)
    finally:
        ahead.close()
    whole = release.threshold_keys(release_plan, counts)
    assert parts == [-(-len(counts) // release._THRESHOLD_CHUNK)]
    for released in (split, whole):
        assert all(f"hi{i}" in released for i in range(300))
        assert not any(f"lo{i}" in released for i in range(300))
        assert all(value >= threshold for value in released.values())
        assert abs(sum(released[f"hi{i}"] for i in range(300)) / 300 - far) < threshold
    rate = [sum(key.startswith("at") for key in r) / 3000 for r in (split, whole)]
    assert 0.3 < rate[0] < 0.7 and abs(rate[0] - rate[1]) < 0.07  # ~8 standard errors
    # few keys: one OpenDP call, no hand-off
    assert release.threshold_keys(release_plan, {"a": far}, run_cells=runner) == \
        {"a": pytest.approx(far, abs=threshold)}
    assert len(parts) == 1


def test_the_gateway_hands_quantile_cells_and_threshold_parts_to_the_pool(gw, monkeypatch):
    from sqlgate.noise_ahead import NoiseAhead
    batches = []
    real = NoiseAhead.run_all

    def spy(self, tasks):
        batches.append(len(tasks))
        return real(self, tasks)

    monkeypatch.setattr(NoiseAhead, "run_all", spy)
    result = gw.query("SELECT colour, MEDIAN(price) AS m FROM sales GROUP BY colour",
                      analyst="q", epsilon=1.0)
    assert batches == [3]  # one release per public cell
    assert len(result.rows) == 3 and all(0 <= row[1] <= 100 for row in result.rows)
    monkeypatch.setattr(release, "_THRESHOLD_CHUNK", 1)
    gw.query("SELECT shop, COUNT(*) AS n FROM sales GROUP BY shop", analyst="t", epsilon=1.0)
    assert batches == [3, 2]  # shops a and b, one part each

"""Checks run identically against every external engine (PostgreSQL, Spark)."""
from __future__ import annotations

import pandas as pd

from sqlgate.gateway import Gateway
from tests.backends.conftest import QUERIES, normalized, plan_for, shop_frames


def assert_bounded_results_match(reference: Gateway, executor, engine: str) -> int:
    compared = 0
    for sql, engines in QUERIES:
        if engine not in engines:
            continue
        plan = plan_for(reference, sql)
        for engine_sql in (plan.bounded_sql, getattr(plan, "quantile_sql", None)):
            if not engine_sql:
                continue
            expected = normalized(reference.executor.run(engine_sql).rows)
            got = normalized(executor.run(engine_sql, timeout_s=60).rows)
            assert got == expected, f"{engine} differs from DuckDB for: {sql}"
            compared += 1
    return compared


def assert_dp_answers_close(reference: Gateway, gateway: Gateway, sql: str, epsilon: float = 100.0):
    """A full DP query through the gateway on the engine, against DuckDB's exact bounded truth."""
    result = gateway.query(sql, analyst="engine-test", epsilon=epsilon)
    truth = reference.query(sql, analyst="engine-truth", epsilon=epsilon)
    assert result.column_names == truth.column_names
    assert len(result.rows) == len(truth.rows)
    for got, want in zip(sorted(result.rows, key=repr), sorted(truth.rows, key=repr)):
        for column, g, w in zip(result.columns, got, want):
            if not column.noisy:
                assert g == w
            else:
                # Both answers are noisy: allow a few 95% half-widths of each.
                tolerance = 6 * (column.ci95 or 1.0) + 1e-6
                assert abs(float(g) - float(w)) <= tolerance, (sql, column.name, g, w)
    return result


def binding_l0_frame(n_units: int = 300) -> dict[str, pd.DataFrame]:
    """Every unit visits all four wards twice: max_groups_per_unit=2 must drop two of them."""
    frames = shop_frames(10)
    rows = []
    for pid in range(n_units):
        for ward in ("cardio", "neuro", "onco", "ortho"):
            for _ in range(3):
                rows.append({"pid": pid, "age": 50, "score": 5.0, "region": "north", "ward": ward,
                             "city": "big-a", "note": "1", "flag": True,
                             "day": frames["visits"]["day"].iloc[0]})
    frames["visits"] = pd.DataFrame(rows)
    return frames

"""A row's fixed-point contribution as the engine rounds it never exceeds the row bound the
sensitivity is computed from, also at exact halves (where Python's round() goes to even and
DuckDB's ROUND away from zero)."""
from __future__ import annotations

import duckdb
import pytest

from rewriter import plan_query
from sqlgate.catalog import resolve_in
from sqlgate.metadata import parse_dataset


def _plan(upper: float, sql: str):
    meta = parse_dataset({
        "dataset": "d", "budget": {"epsilon": 10, "delta": 1e-6},
        "tables": {"t": {"privacy_unit": "uid", "max_groups_per_unit": 1,
                         "max_rows_per_group": 1,
                         "columns": {"uid": "int",
                                     "x": {"type": "float", "lower": 0, "upper": upper}}}}})
    return plan_query(sql, lambda node: resolve_in({"d": meta}, node))


# 2^-17 scaled by 2^16 is exactly 0.5; 600000 + 2^-12 scaled by 2^11 ends in .5.
@pytest.mark.parametrize("upper", [2.0 ** -17, 600000.000244140625, 0.1, 600000.0])
@pytest.mark.parametrize("aggregate", ["SUM(x)", "VARIANCE(x)"])
def test_engine_rounding_stays_within_the_row_bound(upper, aggregate):
    plan = _plan(upper, f"SELECT {aggregate} AS s FROM t")
    conn = duckdb.connect()
    conn.execute("CREATE SCHEMA d")
    conn.execute("CREATE TABLE d.t (uid BIGINT, x DOUBLE)")
    conn.execute("INSERT INTO d.t VALUES (1, ?), (2, 0.0), (3, ?)", [upper, upper / 2])
    # The largest contribution of one unit (one row each here) to every fixed-point sum.
    sums = [m for m in plan.measures if m.fixed_point_bits]
    assert sums
    stages = plan.bounded_sql.rsplit(") SELECT ", 1)[0] + ")"
    largest = conn.execute(stages + " SELECT " + ", ".join(
        f'MAX(ABS("c_{m.name}"))' for m in sums) + " FROM per_unit").fetchone()
    for measure, value in zip(sums, largest):
        assert value <= measure.sensitivity.linf
        if measure.kind == "sum":
            assert value > 0  # the value at `upper` reached the engine's rounding


@pytest.mark.parametrize("truncate", [1, None])  # the direct path and the per-unit stages
def test_sums_skip_nulls_as_sql_does(truncate):
    """NULLs of a nullable column are skipped by SUM/AVG/VARIANCE, as in SQL (they were once
    clamped to `lower`: AVG of half NULLs over [10, 20] came out at the upper bound)."""
    import pandas as pd

    from sqlgate.gateway import Gateway

    spec = {"privacy_unit": "uid",
            "columns": {"uid": "int", "x": {"type": "float", "lower": 10, "upper": 20}}}
    if truncate:
        spec["truncate_rows_per_unit"] = truncate
    meta = parse_dataset({"dataset": "d", "budget": {"epsilon": 1e6, "delta": 1e-3},
                          "tables": {"t": spec}})
    frame = pd.DataFrame({"uid": range(2000),
                          "x": [15.0 if i % 2 else None for i in range(2000)]})
    with Gateway() as gw:
        gw.add_dataset(meta, {"t": frame})
        (avg, total, count, rows, variance), = gw.query(
            "SELECT AVG(x), SUM(x), COUNT(x), COUNT(*), VARIANCE(x) FROM t",
            analyst="a", epsilon=100).rows
    assert avg == pytest.approx(15, abs=0.1)
    assert total == pytest.approx(15000, abs=50)
    assert count == pytest.approx(1000, abs=5) and rows == pytest.approx(2000, abs=5)
    assert variance == pytest.approx(0, abs=0.5)


@pytest.mark.parametrize("truncate", [1, None])
def test_quantiles_skip_nulls_as_sql_does(truncate):
    import pandas as pd

    from sqlgate.gateway import Gateway

    spec = {"privacy_unit": "uid",
            "columns": {"uid": "int", "g": {"type": "string", "public_keys": ["a", "b"]},
                        "x": {"type": "float", "lower": 0, "upper": 100}}}
    if truncate:
        spec["truncate_rows_per_unit"] = truncate
    meta = parse_dataset({"dataset": "d", "budget": {"epsilon": 1e6, "delta": 1e-3},
                          "tables": {"t": spec}})
    # Two thirds NULL: taken as `lower` (0) the median would be 0.
    frame = pd.DataFrame({"uid": range(3000), "g": ["a", "b", "a"] * 1000,
                          "x": [60.0 + (i % 21) if i % 3 == 0 else None for i in range(3000)]})
    with Gateway() as gw:
        gw.add_dataset(meta, {"t": frame})
        (median,), = gw.query("SELECT MEDIAN(x) FROM t", analyst="a", epsilon=100).rows
        grouped = dict(gw.query("SELECT g, MEDIAN(x) FROM t GROUP BY g", analyst="a",
                                epsilon=100).rows)
    assert median == pytest.approx(69, abs=3.5)  # 7 values 60..78; candidates 66-72 tie
    assert grouped["a"] == pytest.approx(69, abs=3.5)

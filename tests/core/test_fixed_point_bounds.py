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

"""The L0 bound (max_groups_per_unit) ranks only the units over it (issue 7).

The bounded SQL splits units by their number of groups: units within the bound keep all
their groups unranked, the others keep the groups with the smallest HASH(unit, keys). The
result must equal ranking every unit, and no unit may keep more than the bound.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sqlgate.gateway import Gateway
from sqlgate.metadata import parse_dataset

L0 = 3
CODES = [f"c{i}" for i in range(8)]


def _meta(threshold: bool):
    code = {"type": "string"} if threshold else {"type": "string", "public_keys": CODES}
    return parse_dataset({
        "dataset": "shop", "budget": {"epsilon": 1e6, "delta": 1e-3},
        "query": {"epsilon": 1.0, "delta": 1e-7},
        "tables": {"sales": {"privacy_unit": "uid", "max_groups_per_unit": L0,
                             "max_rows_per_group": 2,
                             "columns": {"uid": "int", "code": code,
                                         "price": {"type": "float", "lower": 0, "upper": 100,
                                                   "nullable": False}}}}})


def _frame(n_units=300, seed=11):
    rng = np.random.default_rng(seed)
    rows = []
    for uid in range(n_units):
        # 1 to 8 distinct groups per unit, so some units are within L0 and many are over it
        for code in rng.choice(CODES, int(rng.integers(1, 9)), replace=False):
            for _ in range(int(rng.integers(1, 4))):
                rows.append((uid, code, float(rng.uniform(0, 100))))
    return pd.DataFrame(rows, columns=["uid", "code", "price"])


def _reference(bounded_sql: str) -> str:
    """The same plan with the plain ranking of every unit's groups."""
    head = bounded_sql.split(", __groups AS", 1)[0]
    tail = bounded_sql.rsplit(") SELECT ", 1)[1]
    return (f'{head}, bounded AS (SELECT * FROM per_unit QUALIFY ROW_NUMBER() OVER '
            f'(PARTITION BY "__unit" ORDER BY HASH("__unit", "k0"), "k0") <= {L0}) SELECT {tail}')


@pytest.mark.parametrize("threshold", [False, True])
def test_split_l0_bound_equals_ranking_every_unit(tmp_path, threshold):
    sql = "SELECT code, COUNT(*) AS n, SUM(price) AS s FROM sales GROUP BY code"
    with Gateway(tmp_path / "h") as gw:
        gw.add_dataset(_meta(threshold), {"sales": _frame()})
        plan, _ = gw._plan(sql)
        assert not plan.direct_path and "__groups" in plan.bounded_sql
        got = sorted(gw.executor.run(plan.bounded_sql).rows)
        want = sorted(gw.executor.run(_reference(plan.bounded_sql)).rows)
        per_unit_groups = gw.executor.run(
            plan.bounded_sql.rsplit(") SELECT ", 1)[0]
            + ') SELECT "__unit", COUNT(*) FROM bounded GROUP BY "__unit"').rows
    assert got == want and len(got) == len(CODES)
    assert max(n for _, n in per_unit_groups) == L0
    assert len(per_unit_groups) == 300                       # every unit keeps its groups
    # the count of units is bounded: each unit adds at most L0 x Linf rows in all
    assert sum(row[1] for row in got) <= 300 * L0 * 2


def test_public_keys_are_tested_per_row_only_where_the_l0_window_runs(tmp_path):
    frame = _frame()
    frame.loc[frame.index[:40], "code"] = "other"          # a key outside the public set
    with Gateway(tmp_path / "h") as gw:
        gw.add_dataset(_meta(threshold=False), {"sales": frame})
        for sql in ("SELECT code, COUNT(*) AS n FROM sales GROUP BY code",
                    "SELECT code, MEDIAN(price) AS m FROM sales GROUP BY code"):
            plan, _ = gw._plan(sql)
            bounded = plan.bounded_sql or plan.quantile_sql
            # 8 public cells > L0 = 3: a non-public group must not take one of a unit's slots
            assert "'c0', 'c1'" in bounded.split(") SELECT", 1)[0]
            released = gw.query(sql, analyst=f"a{len(sql)}", epsilon=50.0).rows
            assert sorted(r[0] for r in released) == CODES        # never 'other'

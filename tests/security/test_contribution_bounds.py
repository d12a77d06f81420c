"""Joins and rewrites that could multiply one person's contribution, checked exactly.

Two copies of the planted domain differ by one adversarial person (6 people rows, 60 visits
in 20 departments, every value far outside its bounds, joined through a public table with a
duplicated key). For each accepted query the bounded SQL runs on both copies; the change of
every measured vector must stay within the sensitivity the plan claims (L0, Linf, L1, L2),
and quantile inputs may change by at most the claimed rows and groups. This is the exact,
noise-free half of the DP argument; test_dp_audit.py checks the noise half statistically.
"""
from __future__ import annotations

import math
from collections import Counter

import pytest

from rewriter import plan_query
from sqlgate.gateway import Gateway
from tests.security.sentinel import hr_frames, hr_metadata

QUERIES = [
    "SELECT COUNT(*), SUM(salary) FROM people",
    "SELECT region, COUNT(*), SUM(salary), AVG(age) FROM people GROUP BY region",
    "SELECT dept, COUNT(*), SUM(cost) FROM visits GROUP BY dept",
    "SELECT COUNT(*), SUM(v.cost) FROM people p JOIN visits v ON p.pid = v.pid",
    "SELECT COUNT(*), SUM(p.salary) FROM people p JOIN people q ON p.pid = q.pid "
    "JOIN visits v ON v.pid = q.pid",
    "SELECT r.label, COUNT(*), SUM(p.salary) FROM people p JOIN regions r "
    "ON p.region = r.region GROUP BY r.label",
    "SELECT COUNT(*), SUM(salary) FROM people p LEFT JOIN regions r ON p.region = r.region",
    "SELECT v.dept, COUNT(*) FROM visits v JOIN regions r ON r.region = 'n' GROUP BY v.dept",
    "SELECT COUNT(DISTINCT pid), COUNT(*) FROM visits",
    "SELECT width_bucket(cost, 0, 100, 10) AS b, COUNT(*), SUM(cost) FROM visits GROUP BY b",
    "SELECT CASE WHEN cost > 50 THEN 'hi' ELSE 'lo' END AS k, COUNT(*) FROM visits GROUP BY k",
    "SELECT x, COUNT(*) FROM (SELECT dept AS x, pid FROM visits) t GROUP BY x",
    "WITH j AS (SELECT v.cost, v.dept FROM visits v JOIN people p ON v.pid = p.pid) "
    "SELECT dept, SUM(cost) FROM j GROUP BY dept",
    "SELECT VARIANCE(cost), STDDEV(cost) FROM visits",
    "SELECT p.region, v.dept, COUNT(*) FROM people p JOIN visits v ON p.pid = v.pid "
    "GROUP BY p.region, v.dept",
    "SELECT MEDIAN(cost), MAX(cost) FROM visits",
    "SELECT dept, MEDIAN(cost) FROM visits GROUP BY dept",
    "SELECT region, MIN(salary) FROM people GROUP BY region",
]


@pytest.fixture(scope="module")
def neighbours():
    gw = Gateway()
    gw.add_dataset(hr_metadata("n0"), hr_frames())
    gw.add_dataset(hr_metadata("n1"), hr_frames(extra_unit=True))
    yield gw
    gw.close()


def _plan(gw, dataset, sql):
    visible = frozenset({dataset})
    return plan_query(sql, lambda node: gw.catalog.resolve_table(node, visible))


def _vectors(gw, plan) -> dict[tuple, tuple]:
    keys = len(plan.keys.key_names)
    return {tuple(row[:keys]): tuple(row[keys:]) for row in gw.executor.run(plan.bounded_sql).rows}


def _value_cells(gw, plan) -> dict[tuple, Counter]:
    keys = len(plan.keys.key_names)
    cells: dict[tuple, Counter] = {}
    for row in gw.executor.run(plan.quantile_sql).rows:
        cells.setdefault(tuple(row[:keys]), Counter())[tuple(row[keys:])] += 1
    return cells


@pytest.mark.parametrize("sql", QUERIES)
def test_one_person_moves_each_measure_within_its_sensitivity(neighbours, sql):
    plans = [_plan(neighbours, name, sql) for name in ("n0", "n1")]
    assert plans[0].measures == plans[1].measures  # bounds come from metadata, not data
    moved = False
    if plans[0].bounded_sql:
        before, after = (_vectors(neighbours, p) for p in plans)
        cells = set(before) | set(after)
        for index, measure in enumerate(plans[0].measures):
            zero = (0,) * len(plans[0].measures)
            diffs = [abs((after.get(c, zero)[index] or 0) - (before.get(c, zero)[index] or 0))
                     for c in cells]
            sens = measure.sensitivity
            assert sum(1 for d in diffs if d) <= sens.l0, (measure.name, "L0")
            assert max(diffs, default=0) <= sens.linf, (measure.name, "Linf")
            assert sum(diffs) <= sens.l1, (measure.name, "L1")
            assert math.sqrt(sum(d * d for d in diffs)) <= sens.l2 + 1e-9, (measure.name, "L2")
            moved = moved or any(diffs)
    if plans[0].quantile_sql:
        before, after = (_value_cells(neighbours, p) for p in plans)
        for q in plans[0].quantiles:
            changed = 0
            for cell in set(before) | set(after):
                a, b = before.get(cell, Counter()), after.get(cell, Counter())
                # The adversary only adds rows: its values are a multiset difference.
                added = sum((b - a).values())
                assert not (a - b), "a neighbour removed someone else's values"
                assert added <= q.rows_per_unit, (q.name, "rows per group")
                changed += bool(added)
                moved = moved or bool(added)
            assert changed <= q.groups_per_unit, (q.name, "groups per unit")
    assert moved, "the adversarial person should be visible in the bounded result"


def test_without_bounding_the_adversary_would_move_far_more(neighbours):
    """The check above has power: unbounded, the same person adds 60 visits, 360 joined rows."""
    counts = [neighbours.executor.run(
        f'SELECT COUNT(*) FROM "{name}"."people" p JOIN "{name}"."visits" v ON p.pid = v.pid'
    ).rows[0][0] for name in ("n0", "n1")]
    plan = _plan(neighbours, "n0", "SELECT COUNT(*) FROM people p JOIN visits v ON p.pid = v.pid")
    assert counts[1] - counts[0] == 360 > plan.measures[0].sensitivity.l1

"""`max_rows_per_unit` on PostgreSQL: the translated truncation (HASH -> MD5, QUALIFY -> a
subquery) keeps k rows per unit there too. Skips locally without PostgreSQL binaries or
psycopg; fails in CI (the server is installed by .ci/install-backends.sh)."""
from __future__ import annotations

import pandas as pd
import pytest

from rewriter import plan_query
from sqlgate.catalog import resolve_in
from sqlgate.gateway import Gateway
from sqlgate.metadata import dataset_to_dict, parse_dataset
from tests.pgserver import PostgresServer
from tests.core.test_rows_per_unit import K, _frame, _heavy, _meta


@pytest.fixture(scope="module")
def pg():
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def engines(pg):
    """d0 and d1 (d0 plus a 100-row unit) on PostgreSQL, and d1 on DuckDB."""
    from sqlgate.backends.postgres import PostgresExecutor

    metas = {name: parse_dataset({**dataset_to_dict(_meta()), "dataset": name})
             for name in ("d0", "d1")}
    # Every unit but the heavy one has fewer than K rows: nothing else is truncated.
    frames = {"d0": _frame(rows=2), "d1": pd.concat([_frame(rows=2), _heavy()])}
    executor = PostgresExecutor(pg.conninfo)
    for name, meta in metas.items():
        executor.load_dataset(meta, {"people": frames[name]})
    duck = Gateway()
    duck.add_dataset(metas["d1"], {"people": frames["d1"]})
    yield metas, executor, duck
    executor.close()
    duck.close()


def _plan(meta, sql):
    return plan_query(sql.replace("FROM people", f"FROM {meta.name}.people"),
                      lambda node: resolve_in({meta.name: meta}, node))


@pytest.mark.parametrize("sql", [
    "SELECT COUNT(*), SUM(age) FROM people",
    "SELECT COUNT(*) FROM people WHERE age > 50",
    "SELECT COUNT(DISTINCT pid) FROM people",
])
def test_postgres_keeps_k_rows_per_unit_like_duckdb(engines, sql):
    metas, executor, duck = engines
    plan = _plan(metas["d1"], sql)
    assert plan.direct_path and "ROW_NUMBER" in plan.bounded_sql
    on_pg = executor.run(plan.bounded_sql).rows
    # The heavy unit's rows differ only in region and note, so whichever K rows an engine
    # keeps (MD5 there, DuckDB's hash here), these totals are the same.
    assert [tuple(int(v) for v in row) for row in on_pg] == \
        [tuple(int(v) for v in row) for row in duck.executor.run(plan.bounded_sql).rows]


def test_postgres_neighbours_stay_within_the_sensitivity(engines):
    metas, executor, _ = engines
    sql = "SELECT region, COUNT(*), SUM(score) FROM people GROUP BY region"
    vectors = []
    for name in ("d0", "d1"):
        plan = _plan(metas[name], sql)
        vectors.append({row[0]: tuple(int(v) for v in row[1:])
                        for row in executor.run(plan.bounded_sql).rows})
    count_diffs = [abs(vectors[1].get(c, (0, 0))[0] - vectors[0].get(c, (0, 0))[0])
                   for c in set(vectors[0]) | set(vectors[1])]
    assert sum(count_diffs) == K                      # the 100-row unit adds exactly K rows
    assert plan.measures[0].sensitivity.l1 == K

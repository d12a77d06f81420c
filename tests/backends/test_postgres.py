"""The PostgreSQL executor against a real server started by the test (skips locally without
PostgreSQL binaries or psycopg; fails in CI)."""
from __future__ import annotations

import threading

import pytest

from sqlgate.backends import attach, use_executor
from sqlgate.errors import DataLoadError, ExecutionFailed, QueryCanceled
from sqlgate.gateway import Gateway
from tests.backends.conftest import plan_for, shop_frames, shop_metadata
from tests.backends.engine_checks import (assert_bounded_results_match, assert_dp_answers_close,
                                          binding_l0_frame)
from tests.pgserver import PostgresServer


@pytest.fixture(scope="module")
def pg():
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="module")
def executor(pg):
    from sqlgate.backends.postgres import PostgresExecutor
    ex = PostgresExecutor(pg.conninfo)
    ex.load_dataset(shop_metadata(), shop_frames())
    yield ex
    ex.close()


def test_bounded_results_equal_duckdb(reference, executor):
    assert assert_bounded_results_match(reference, executor, "postgres") >= 19


def test_dp_queries_through_the_gateway(reference, executor):
    gateway = Gateway()
    own = attach(gateway, executor, shop_metadata())  # data already loaded by the fixture
    try:
        result = assert_dp_answers_close(
            reference, gateway, "SELECT region, COUNT(*) AS n, AVG(score) AS s FROM visits "
                                "GROUP BY region")
        assert {row[0] for row in result.rows} == {"north", "south", "east", "west"}
        assert "TRY(" in result.rewritten_sql or "ROUND" in result.rewritten_sql  # DuckDB text
        # Quantiles run their own SQL on the engine too.
        median = gateway.query("SELECT MEDIAN(age) AS m FROM visits", analyst="q", epsilon=50)
        assert 35 <= median.rows[0][0] <= 65
        # Charged on the gateway's ledger like any query.
        assert gateway.budget("engine-test", "shop").queries == 1
    finally:
        use_executor(gateway, own)  # the module's PostgreSQL executor outlives this gateway
        gateway.close()


def test_predicates_that_fail_on_data_are_total(executor, reference):
    """Division by zero, bad casts and overflow inside TRY() never raise on PostgreSQL."""
    plan = plan_for(reference, "SELECT COUNT(*) FROM visits WHERE CAST(note AS INT) / "
                               "(age - age) > 1 OR abs(age * 9223372036854775807) > 0 "
                               "OR CAST(CAST(day AS VARCHAR) || note AS DATE) IS NULL")
    translated = executor.translate(plan.bounded_sql)
    assert "TRY(" not in translated.query.upper().replace("PG_TEMP.SQLGATE_TRY", "")
    assert any("EXCEPTION WHEN data_exception" in s for s in translated.setup)
    executor.run(plan.bounded_sql, timeout_s=30)  # must not raise


def test_l0_bound_holds_when_it_binds(pg):
    from sqlgate.backends.postgres import PostgresExecutor
    meta = shop_metadata(max_groups_per_unit=2)
    ex = PostgresExecutor(pg.new_database("binding_l0"))
    gateway = Gateway()
    try:
        attach(gateway, ex, meta, binding_l0_frame(300))
        plan = plan_for(gateway, "SELECT ward, COUNT(*) FROM visits GROUP BY ward")
        rows = ex.run(plan.bounded_sql).rows
        # Each unit keeps exactly 2 of its 4 wards, each capped at 2 rows.
        assert sum(count for _, count in rows) == 300 * 2 * 2
        assert len(rows) == 4
    finally:
        gateway.close()


def test_engine_errors_are_withheld_and_timeouts_cancel(executor):
    with pytest.raises(ExecutionFailed) as info:
        executor.run('SELECT COUNT(*) FROM "shop"."no_such_table"')
    assert "no_such_table" not in info.value.message
    with pytest.raises(QueryCanceled):
        executor.run("SELECT pg_sleep(5)", timeout_s=0.3)
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    with pytest.raises(QueryCanceled):
        executor.run("SELECT pg_sleep(5)", timeout_s=30, cancel=cancel)
    # The pooled connection is still usable afterwards.
    assert executor.run("SELECT 1 AS one").rows == [(1,)]


def test_runs_never_persist_anything(executor):
    executor.run("SELECT COUNT(*) FROM shop.visits WHERE TRY(CAST(note AS INT) > 1)")
    rows = executor.run("SELECT COUNT(*) FROM pg_proc p JOIN pg_namespace n ON "
                        "p.pronamespace = n.oid WHERE p.proname LIKE 'sqlgate_%'").rows
    assert rows == [(0,)]


def test_loading_checks_metadata_and_truncates(pg):
    from sqlgate.backends.postgres import PostgresExecutor
    ex = PostgresExecutor(pg.new_database("loading"))
    try:
        frames = shop_frames(50)
        frames["visits"].loc[3, "age"] = None
        with pytest.raises(DataLoadError) as info:
            ex.load_dataset(shop_metadata(), frames)
        assert "age" in info.value.message and "NULL" in info.value.message
        meta = shop_metadata(truncate_rows_per_unit=1)
        ex.load_dataset(meta, shop_frames(200))
        most = ex.run("SELECT MAX(n) FROM (SELECT pid, COUNT(*) AS n FROM shop.visits "
                      "GROUP BY pid) AS t").rows[0][0]
        assert most == 1
    finally:
        ex.close()


def test_content_facts_come_from_the_engine_that_holds_the_rows(pg):
    """Public uniqueness is read from PostgreSQL, never from the gateway's empty stand-ins
    (on which every column is vacuously distinct, and a join on a repeated public key
    would keep the direct path and fan a unit's rows out)."""
    import pandas as pd

    from sqlgate.backends import add_external_dataset
    from sqlgate.backends.postgres import PostgresExecutor
    meta = shop_metadata()
    frames = shop_frames(50)
    frames["zones"] = pd.DataFrame({"region": ["north", "north", "south"],
                                    "zone": ["cold", "warm", "warm"]})
    ex = PostgresExecutor(pg.new_database("content_facts"))
    gateway = Gateway()
    own = attach(gateway, ex, meta, frames)
    try:
        assert gateway.dataset("shop").tables["zones"].unique_columns == frozenset()
        plan = plan_for(gateway, "SELECT zone, COUNT(*) FROM visits JOIN zones "
                                 "ON visits.region = zones.region GROUP BY zone")
        assert "per_unit" in plan.bounded_sql  # no direct path through a repeated key
        # Without the engine that holds the rows nothing is taken from the stand-ins.
        other = Gateway()
        try:
            add_external_dataset(other, meta)
            assert other.dataset("shop").tables["zones"].unique_columns == frozenset()
        finally:
            other.close()
        # A key column distinct on the engine is recorded.
        frames["zones"] = pd.DataFrame({"region": ["north", "south"], "zone": ["cold", "warm"]})
        ex.load_dataset(meta, frames)
        add_external_dataset(gateway, meta, replace=True, engine=ex)
        assert gateway.dataset("shop").tables["zones"].unique_columns == {"region", "zone"}
    finally:
        use_executor(gateway, own)
        gateway.close()
        ex.close()

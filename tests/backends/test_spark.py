"""The Spark executor in local mode (one module-scoped SparkSession: the JVM start is slow).

Skips locally without pyspark or java; fails in CI. The default run compares the queries that
exercise the engine-specific rewrites (TRY semantics, overflow, division, casts, joins); the
whole query list runs with --runslow.
"""
from __future__ import annotations

import pytest

from sqlgate.backends import use_executor
from sqlgate.gateway import Gateway
from tests._require import require_module, require_program
from tests.backends.conftest import QUERIES, normalized, plan_for, shop_frames, shop_metadata
from tests.backends.engine_checks import assert_bounded_results_match, assert_dp_answers_close

UNITS = 400  # smaller than the PostgreSQL data: every Spark query is a few local jobs
DEFAULT_SUBSET = (
    "SELECT region, COUNT(*), SUM(age), AVG(score) FROM visits GROUP BY region",
    "SELECT COUNT(*), SUM(score) FROM visits WHERE CAST(note AS INT) > 5",
    "SELECT COUNT(*) FROM visits WHERE 100 % (age - 50) = 0 OR region = 'north'",
    "SELECT COUNT(*) FROM visits WHERE CASE WHEN age <> 50 THEN 100 % (age - 50) ELSE 0 END = 0",
    "SELECT COUNT(*) FROM visits WHERE age * 9223372036854775807 > 0",
    "SELECT COUNT(*) FROM visits WHERE age / (age - age) > 1e308",
    "SELECT z.zone, COUNT(*), AVG(v.age) FROM visits v JOIN zones z ON v.region = z.region GROUP BY z.zone",
)


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    require_program("java")
    require_module("pyspark")
    from sqlgate.backends.spark import local_session
    session = local_session("sqlgate-tests", cores=2,
                            warehouse=str(tmp_path_factory.mktemp("spark-warehouse")))
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def small_reference():
    gateway = Gateway()
    gateway.add_dataset(shop_metadata(), shop_frames(UNITS))
    yield gateway
    gateway.close()


@pytest.fixture(scope="module")
def executor(spark):
    from sqlgate.backends.spark import SparkExecutor
    ex = SparkExecutor(spark)
    ex.load_dataset(shop_metadata(), shop_frames(UNITS))
    yield ex
    ex.close()


def test_subset_is_in_the_query_list():
    listed = {sql: engines for sql, engines in QUERIES}
    assert all("spark" in listed[sql] for sql in DEFAULT_SUBSET)


@pytest.mark.parametrize("sql", DEFAULT_SUBSET)
def test_bounded_results_equal_duckdb(small_reference, executor, sql):
    plan = plan_for(small_reference, sql)
    expected = normalized(small_reference.executor.run(plan.bounded_sql).rows)
    got = normalized(executor.run(plan.bounded_sql, timeout_s=120).rows)
    assert got == expected


@pytest.mark.slow
def test_every_listed_query_equals_duckdb(small_reference, executor):
    assert assert_bounded_results_match(small_reference, executor, "spark") >= 18


def test_translation_keeps_try_semantics(small_reference, executor):
    plan = plan_for(small_reference, "SELECT COUNT(*) FROM visits WHERE age * 9223372036854775807 > 0")
    translated = executor.translate(plan.bounded_sql).query.upper()
    assert "TRY(" not in translated
    assert "TRY_MULTIPLY(" in translated and "THEN NULL" in translated


def test_dp_query_through_a_gateway_on_spark(small_reference, executor):
    gateway = Gateway()
    own = None
    try:
        from sqlgate.backends import add_external_dataset
        add_external_dataset(gateway, shop_metadata())  # rows live in Spark only
        own = use_executor(gateway, executor)
        result = assert_dp_answers_close(
            small_reference, gateway,
            "SELECT region, COUNT(*) AS n, AVG(age) AS a FROM visits GROUP BY region")
        assert sorted(row[0] for row in result.rows) == ["east", "north", "south", "west"]
        assert gateway.budget("engine-test", "shop").queries == 1
    finally:
        if own is not None:
            use_executor(gateway, own)  # the Spark executor is the module's
        gateway.close()


def test_engine_errors_are_withheld(executor):
    from sqlgate.errors import ExecutionFailed
    with pytest.raises(ExecutionFailed) as info:
        executor.run('SELECT COUNT(*) FROM "shop"."no_such_table"')
    assert "no_such_table" not in info.value.message


def test_integer_sums_never_wrap_around(executor):
    """Spark sums a BIGINT into a BIGINT that wraps at 2^63 with ANSI mode off; every SUM of
    the rewriter's SQL is therefore widened to DECIMAL(38, 0)."""
    quarter = 2**62
    rows = executor.run(f"SELECT SUM(v) AS s FROM (VALUES ({quarter}), ({quarter}), ({quarter}))"
                        " AS t(v)").rows
    assert int(rows[0][0]) == 3 * quarter

"""Very large or deeply nested queries, runaway joins and cancelled queries: each is refused
by a size/depth limit or stopped by the statement timeout (checked by the error, never by
wall-clock time), spends nothing, leaks nothing, and the gateway keeps answering.

test_attacks.py covers deep parentheses, huge IN lists, long OR chains and wide SELECTs.
"""
from __future__ import annotations

import threading

import pytest

from sqlgate.errors import PolicyRefused, QueryCanceled, UnsupportedQuery
from tests.security.sentinel import assert_error_is_clean, build_gateway

DEPTH_WORDS = ("too large", "too deeply", "longer than")


@pytest.fixture(scope="module")
def gw():
    gateway = build_gateway(statement_timeout_s=0.3)
    yield gateway
    gateway.close()


def _self_join(table: str, copies: int, aggregate: str = "COUNT(*)") -> str:
    joins = " ".join(f"JOIN {table} t{i} ON t{i}.pid = t0.pid" for i in range(1, copies))
    return f"SELECT {aggregate} FROM {table} t0 {joins}"


REFUSED_BY_LIMITS = {
    "nested-subqueries": "SELECT COUNT(*) FROM " + "(SELECT * FROM " * 200 + "people"
                         + ") t" * 200,
    "nested-functions": "SELECT COUNT(*) FROM people WHERE " + "abs(" * 3000 + "salary"
                        + ")" * 3000 + " > 1",
    "nested-not": "SELECT COUNT(*) FROM people WHERE " + "NOT " * 5000 + "salary > 1",
    "long-text": "SELECT COUNT(*) FROM people WHERE name = '" + "x" * 100_001 + "'",
    "many-case-branches": "SELECT COUNT(*) FROM people WHERE CASE "
                          + " ".join(f"WHEN salary = {i} THEN {i}" for i in range(3000))
                          + " END > 0",
}


@pytest.mark.parametrize("sql", REFUSED_BY_LIMITS.values(), ids=REFUSED_BY_LIMITS.keys())
def test_size_and_depth_limits(gw, sql):
    before = gw.budget("big", "hr")
    with pytest.raises(UnsupportedQuery) as raised:
        gw.query(sql, analyst="big")
    assert any(word in raised.value.message for word in DEPTH_WORDS), raised.value.message
    assert_error_is_clean(raised.value, sql)
    assert gw.budget("big", "hr") == before


def test_public_cells_are_capped_before_any_work(gw):
    sql = ("SELECT width_bucket(salary, 0, 10000, 10000) AS a, width_bucket(age, 0, 100, 10000) "
           "AS b, COUNT(*) FROM people GROUP BY a, b")
    with pytest.raises(PolicyRefused) as raised:
        gw.describe(sql)
    assert "cells" in raised.value.message


ACCEPTED_LARGE = {
    "sixty-way-self-join": _self_join("people", 60),
    "long-literal": "SELECT COUNT(*) FROM people WHERE name = '" + "x" * 99_000 + "'",
    "in-list-4000": "SELECT COUNT(*) FROM people WHERE name IN ("
                    + ",".join(f"'n{i}'" for i in range(4000)) + ")",
    "10000-bins": "SELECT width_bucket(salary, 0, 10000, 10000) AS b, COUNT(*) FROM people "
                  "GROUP BY b",
    "100-quantiles": "SELECT " + ", ".join(f"QUANTILE_CONT(salary, {i / 100})" for i in range(100))
                     + " FROM people",
}


@pytest.mark.parametrize("sql", ACCEPTED_LARGE.values(), ids=ACCEPTED_LARGE.keys())
def test_large_but_bounded_queries_are_answered(sql):
    # A generous timeout: these must finish, and the point is that they are answered at all.
    gateway = build_gateway(statement_timeout_s=60)
    try:
        result = gateway.query(sql, analyst="big", epsilon=0.5)
        assert result.rows and gateway.budget("big", "hr").queries == 1
    finally:
        gateway.close()


def test_runaway_join_hits_the_statement_timeout_and_spends_nothing(gw):
    # 3 visits per person joined 20 times with itself: 3**20 rows per person.
    sql = _self_join("visits", 20, "SUM(t0.cost)")
    before = gw.budget("slow", "hr")
    with pytest.raises(QueryCanceled) as raised:
        gw.query(sql, analyst="slow")
    assert "timeout" in raised.value.message
    assert_error_is_clean(raised.value, sql)
    assert gw.budget("slow", "hr") == before
    # The engine is free again for the next query.
    assert gw.query("SELECT COUNT(*) FROM people", analyst="slow").rows


def test_cancelled_query_spends_nothing(gw):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(QueryCanceled):
        gw.query("SELECT COUNT(*) FROM visits", analyst="cancel", cancel=cancel)
    assert gw.budget("cancel", "hr").queries == 0


@pytest.mark.parametrize("expression", [
    pytest.param("len(range(5))", id="range"),
    pytest.param("length(repeat('x', 5))", id="repeat"),
    pytest.param("current_setting('memory_limit')", id="setting"),
    pytest.param("version()", id="version"),
    pytest.param("ROUND(COUNT(*) / 2.0, 1)", id="arithmetic-allowed"),
])
def test_result_expressions_are_allow_listed(gw, expression):
    """Only arithmetic and simple functions over noisy values may run after the release."""
    sql = f"SELECT COUNT(*) AS n, {expression} AS x FROM people"
    if expression.startswith("ROUND"):
        assert [c.name for c in gw.describe(sql)] == ["n", "x"]
        return
    with pytest.raises((UnsupportedQuery, PolicyRefused)):
        gw.describe(sql)

"""Data-dependent errors as an oracle: an expression that fails only on the target's row.

For every place a row-level expression can sit (WHERE, GROUP BY bins, JOIN ... ON towards a
private or a public table) and every way an expression can fail on a value (bad cast,
overflow, division by zero, date overflow), the query is sent twice: once probing a name that
exists (ZZSECRET42) and once one that does not. The two outcomes must be indistinguishable:
both answered and both charged, or both refused with the same error. A difference is a free
membership test on private data (the engine fails before the charge).
"""
from __future__ import annotations

import pytest

from sqlgate.errors import SqlgateError
from tests.security.sentinel import SECRET_NAME, assert_error_is_clean, build_gateway

ABSENT = "NOBODY-77"

# Expressions that raise on some values (the engine's error would depend on the row).
FAILING = {
    "overflow": "CAST(p.salary AS BIGINT) * 9223372036854775807",
    "cast": "CAST(p.name AS INT)",
    "decimal": "CAST(p.salary AS DECIMAL(3, 0))",
    "division": "1 / (CAST(p.salary AS BIGINT) - CAST(p.salary AS BIGINT))",
    "modulo": "CAST(p.salary AS BIGINT) % 0",
    "date": "EXTRACT(year FROM p.born + INTERVAL 100000000 YEAR)",
}


def _where(expr):
    return ("SELECT COUNT(*) FROM people p WHERE "
            f"(CASE WHEN p.name = '{{probe}}' THEN {expr} ELSE 1 END) > 0")


def _group(expr):
    return ("SELECT CASE WHEN p.name = '{probe}' AND " + expr + " > 0 THEN 'a' ELSE 'b' END AS k, "
            "COUNT(*) FROM people p GROUP BY k")


def _join_private(expr):
    return ("SELECT COUNT(*) FROM people p JOIN visits v ON p.pid = v.pid AND "
            f"(CASE WHEN p.name = '{{probe}}' THEN {expr} ELSE 1 END) > 0")


def _join_public(expr):
    return ("SELECT COUNT(*) FROM people p JOIN regions r ON p.region = r.region AND "
            f"(CASE WHEN p.name = '{{probe}}' THEN {expr} ELSE 1 END) > 0")


CASES = []
for place, template in (("where", _where), ("group", _group), ("join-private", _join_private),
                        ("join-public", _join_public)):
    for kind, expr in FAILING.items():
        CASES.append(pytest.param(template(expr), id=f"{place}-{kind}"))


@pytest.fixture(scope="module")
def gw():
    gateway = build_gateway()
    yield gateway
    gateway.close()


def _outcome(gw, analyst, sql):
    before = gw.budget(analyst, "hr").spent_epsilon
    try:
        gw.query(sql, analyst=analyst, epsilon=0.25)
        outcome = ("answered",)
    except SqlgateError as err:
        assert_error_is_clean(err, sql)
        outcome = (type(err).__name__, err.message.replace(sql, "<sql>"))
    charged = gw.budget(analyst, "hr").spent_epsilon - before
    return outcome, round(charged, 9)


@pytest.mark.parametrize("template", CASES)
def test_failing_expression_is_no_oracle(gw, template, request):
    analyst = request.node.callspec.id
    present = _outcome(gw, analyst, template.format(probe=SECRET_NAME))
    absent = _outcome(gw, analyst, template.format(probe=ABSENT))
    assert present == absent


def test_oracle_check_has_power():
    """The comparison above does see a difference when one exists: a query that is refused
    only for one probe value (by the planner, on query text) differs from one answered."""
    gateway = build_gateway()
    try:
        answered = _outcome(gateway, "a", "SELECT COUNT(*) FROM people WHERE name = 'x'")
        refused = _outcome(gateway, "a", "SELECT COUNT(*) FROM people WHERE name ~ 'x'")
        assert answered != refused
    finally:
        gateway.close()

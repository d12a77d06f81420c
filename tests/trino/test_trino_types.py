"""Values and type signatures as Trino clients decode them."""
from __future__ import annotations

import datetime as dt

from server.trino.errors import query_error
from server.trino.routes import _dp_type
from server.trino.types import json_value, trino_type_for_duckdb, type_signature
from sqlgate.errors import BudgetExhausted, ExecutionFailed


def test_values():
    assert json_value(float("nan"), "double") == "NaN"
    assert json_value(float("-inf"), "double") == "-Infinity"
    assert json_value(3.0, "bigint") == 3
    assert json_value(dt.date(2024, 5, 1), "date") == "2024-05-01"
    assert json_value(None, "varchar") is None
    assert json_value(7, "varchar") == "7"


def test_types():
    assert type_signature("varchar") == {"rawType": "varchar",
                                         "arguments": [{"kind": "LONG", "value": 2147483647}]}
    assert type_signature("decimal(10,2)") == {"rawType": "decimal", "arguments": [
        {"kind": "LONG", "value": 10}, {"kind": "LONG", "value": 2}]}
    assert trino_type_for_duckdb("INTEGER") == "integer"
    assert trino_type_for_duckdb("STRUCT(a INTEGER)") == "varchar"
    # A declared int that post-processing made fractional is sent as double, not truncated.
    assert _dp_type("int", [1, 2.0]) == "bigint"
    assert _dp_type("int", [1, 2.5]) == "double"


def test_error_objects_never_carry_foreign_text():
    error = query_error(BudgetExhausted("over budget", details={"remaining_epsilon": 0.1}))
    assert error["errorName"] == "EXCEEDED_PRIVACY_BUDGET"
    assert error["failureInfo"]["details"] == {"remaining_epsilon": 0.1}
    assert error["sqlState"] == "53400" and "53400" in error["message"]
    error = query_error(ValueError("secret value 12345"))
    assert "12345" not in str(error) and error["errorType"] == "INTERNAL_ERROR"
    assert query_error(ExecutionFailed())["errorName"] == "GENERIC_INTERNAL_ERROR"

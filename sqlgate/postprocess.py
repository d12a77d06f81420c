"""Shared pieces of post-processing: typing released keys and result columns.

Post-processing runs only over public keys and noisy values (after the release), in a small
sandboxed engine of its own, so these helpers never see private rows.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable

import duckdb
import pandas as pd
import pyarrow as pa
from sqlglot import exp

from sqlgate.errors import UnsupportedQuery

# One row per released cell: the cap stops any expression that slips past the rewriter's
# allow-list from exhausting the server's memory.
POSTPROCESS_MEMORY_LIMIT = "512MB"


def typed_keys(series: pd.Series, type_name: str) -> pd.Series:
    """A key column with the pandas dtype of its declared type (nullable where needed)."""
    if type_name == "int":
        return series.astype("Int64")
    if type_name == "float":
        return series.astype("float64")
    if type_name == "bool":
        return series.astype("boolean")
    if type_name == "date":
        return pd.to_datetime(series).dt.date.astype("object") if len(series) \
            else series.astype("datetime64[s]")
    return series.astype("object") if len(series) else series.astype("string")


def type_from_engine(engine_type: str) -> str:
    """Our column type name (int, float, bool, date, string) for a DuckDB result type."""
    upper = engine_type.upper()
    if "INT" in upper:
        return "int"
    if any(t in upper for t in ("DOUBLE", "FLOAT", "DECIMAL", "REAL")):
        return "float"
    if "BOOL" in upper:
        return "bool"
    if "DATE" in upper or "TIMESTAMP" in upper:
        return "date"
    return "string"


def run_postprocess(conn: duckdb.DuckDBPyConnection, postprocess_sql: str,
                    noisy: pa.Table | pd.DataFrame) -> tuple[list[tuple], list[str]]:
    """Rows and DuckDB types of the post-processing query over the table `noisy`."""
    # As Arrow: DuckDB binds an Arrow table ~5x faster than it scans a pandas frame, and
    # this runs on every query.
    if isinstance(noisy, pd.DataFrame):
        noisy = pa.Table.from_pandas(noisy, preserve_index=False)
    conn.register("noisy", noisy)
    try:
        relation = conn.execute(postprocess_sql)
        types = [str(d[1]) for d in relation.description]
        return relation.fetchall(), types
    except duckdb.Error as err:
        # Only public keys and noisy values are in this engine, so its message is safe;
        # still keep it short and typed.
        raise UnsupportedQuery(f"the query's result expressions could not be computed: "
                               f"{str(err).splitlines()[0][:200]}") from None
    finally:
        conn.unregister("noisy")


# ---------------------------------------------------------------- engine-free projections
#
# Most post-processing is a projection of the noisy table: keys and noisy measures passed
# through or renamed, fixed-point sums divided by their scale, AVG/STDDEV formulas. Sending
# that through the scratch DuckDB (register, bind, execute, fetch, unregister) cost ~1 ms
# per query, a third of a small query's DP overhead. `compile_projection` turns such a
# projection into Python closures with DuckDB's exact semantics for the shapes it accepts
# (IEEE double arithmetic, DuckDB's result types); anything else (WHERE from HAVING, ORDER
# BY, LIMIT, other functions, integer arithmetic that could overflow, a NULL, a division by
# zero, a non-finite intermediate) stays on, or falls back to, the engine path.

# Arrow types of the noisy table -> the DuckDB type the engine reports for them.
_ARROW_TO_ENGINE = {pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.string(): "VARCHAR",
                    pa.large_string(): "VARCHAR", pa.bool_(): "BOOLEAN", pa.date32(): "DATE"}
_I32 = 2**31
_I64 = 2**63
# Literal types: INTEGER and DECIMAL are DuckDB's types of 2048 and 0.5 in SQL text.
_NUMERIC = ("BIGINT", "INTEGER", "DOUBLE", "DECIMAL")


class _Fallback(Exception):
    """This projection (or these values) must go through the engine."""


@dataclass(frozen=True)
class _Node:
    type: str
    evaluate: Callable[[dict[str, list], int], list]
    """(input columns by name, row count) -> one value per row."""


@dataclass(frozen=True)
class FastProjection:
    """A post-processing SELECT evaluated without an engine (see above)."""

    outputs: tuple[_Node, ...]
    input_types: dict[str, str]
    """Engine types of the noisy columns the projection was compiled for."""

    @property
    def types(self) -> list[str]:
        return [node.type for node in self.outputs]

    def run(self, noisy: pa.Table) -> tuple[list[tuple], list[str]] | None:
        """Rows and engine types, or None when these values need the engine."""
        for name, engine_type in self.input_types.items():
            if name not in noisy.column_names \
                    or _ARROW_TO_ENGINE.get(noisy.schema.field(name).type) != engine_type:
                return None
        columns = {name: noisy.column(name).to_pylist() for name in self.input_types}
        try:
            values = [node.evaluate(columns, noisy.num_rows) for node in self.outputs]
        except (_Fallback, ArithmeticError, TypeError, ValueError):
            return None
        return list(zip(*values)), self.types


def compile_projection(select: exp.Select, noisy_schema: pa.Schema) -> FastProjection | None:
    """A FastProjection for `select` over a table of `noisy_schema`, or None if the select
    is not a plain projection of supported expressions."""
    if not isinstance(select, exp.Select):
        return None
    allowed = {"expressions", "from", "from_"}
    if any(value not in (None, [], False) for key, value in select.args.items()
           if key not in allowed):
        return None
    source = select.args.get("from") or select.args.get("from_")
    if source is None or not isinstance(source.this, exp.Table) or source.this.alias \
            or source.this.args.get("db") or source.this.args.get("catalog") \
            or source.this.name != "noisy":
        return None
    input_types = {}
    for field in noisy_schema:
        engine_type = _ARROW_TO_ENGINE.get(field.type)
        if engine_type is not None:
            input_types[field.name] = engine_type
    used: dict[str, str] = {}
    outputs = []
    try:
        for item in select.expressions:
            body = item.this if isinstance(item, exp.Alias) else item
            node = _compile(body, input_types, used)
            if node.type in ("INTEGER", "DECIMAL"):
                raise _Fallback("a bare literal column")
            outputs.append(node)
    except _Fallback:
        return None
    return FastProjection(tuple(outputs), used)


def _compile(node: exp.Expression, input_types: dict[str, str], used: dict[str, str]) -> _Node:
    if isinstance(node, exp.Paren):
        return _compile(node.this, input_types, used)
    if isinstance(node, exp.Column):
        if node.table or not isinstance(node.this, exp.Identifier):
            raise _Fallback("qualified column")
        name = node.name
        if name not in input_types:
            raise _Fallback("unknown column")  # the engine gives the (binding) error
        used[name] = input_types[name]
        return _Node(input_types[name], lambda cols, n, name=name: cols[name])
    if isinstance(node, exp.Literal) and not node.is_string:
        return _literal(node.this)
    if isinstance(node, exp.Neg):
        inner = _compile(node.this, input_types, used)
        if inner.type not in ("INTEGER", "DECIMAL", "DOUBLE"):
            raise _Fallback("negating a BIGINT can overflow")
        return _Node(inner.type, lambda cols, n: [-v for v in _numbers(inner, cols, n)])
    if isinstance(node, exp.Cast):
        inner = _compile(node.this, input_types, used)
        if node.to.this != exp.DataType.Type.DOUBLE or inner.type not in _NUMERIC:
            raise _Fallback("cast")
        return _Node("DOUBLE", lambda cols, n: _doubles(inner, cols, n))
    if isinstance(node, (exp.Div, exp.Mul, exp.Add, exp.Sub)):
        return _arithmetic(node, _compile(node.this, input_types, used),
                           _compile(node.expression, input_types, used))
    if isinstance(node, (exp.Greatest, exp.Least)):
        args = [_compile(a, input_types, used) for a in [node.this, *node.expressions]]
        return _extremum(max if isinstance(node, exp.Greatest) else min, args)
    if isinstance(node, exp.Sqrt):
        inner = _compile(node.this, input_types, used)
        if inner.type not in ("BIGINT", "DOUBLE"):
            raise _Fallback("sqrt")
        return _Node("DOUBLE", lambda cols, n: [_sqrt(v) for v in _doubles(inner, cols, n)])
    raise _Fallback(type(node).__name__)


def _literal(text: str) -> _Node:
    if "e" in text.lower():
        value: float | int = float(text)  # DuckDB reads scientific notation as DOUBLE
        kind = "DOUBLE"
    elif "." in text:
        whole, _, fraction = text.lstrip("-").partition(".")
        digits = (whole + fraction).lstrip("0") or "0"
        # DuckDB makes it a DECIMAL(width, scale) and converts it to DOUBLE as
        # double(digits) / 10.0**scale (exact powers up to 1e22). Wider literals it reads
        # otherwise: leave them to the engine. (The plan-time check compares the values.)
        if not (whole + fraction).isdigit() or len(digits) > 38 or len(fraction) > 22:
            raise _Fallback("wide decimal literal")
        value = float(int(digits)) / float(10 ** len(fraction))
        value, kind = (-value if text.startswith("-") else value), "DECIMAL"
    else:
        value = int(text)
        kind = "INTEGER" if -_I32 <= value < _I32 else "BIGINT"
        if not -_I64 <= value < _I64:
            raise _Fallback("huge literal")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Fallback("non-finite literal")
    return _Node(kind, lambda cols, n: [value] * n)


def _numbers(node: _Node, cols: dict[str, list], n: int) -> list:
    values = node.evaluate(cols, n)
    for v in values:
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _Fallback("NULL or non-number")  # NULL semantics are the engine's
    return values


def _doubles(node: _Node, cols: dict[str, list], n: int) -> list[float]:
    # float(int) rounds to nearest-even like DuckDB's BIGINT -> DOUBLE cast.
    return [float(v) for v in _numbers(node, cols, n)]


def _finite(values: list[float]) -> list[float]:
    for v in values:
        if not math.isfinite(v):
            raise _Fallback("non-finite value")
    return values


_OPERATIONS = {exp.Div: operator.truediv, exp.Mul: operator.mul, exp.Add: operator.add,
               exp.Sub: operator.sub}


def _arithmetic(node: exp.Expression, left: _Node, right: _Node) -> _Node:
    operation = _OPERATIONS[type(node)]
    types = {left.type, right.type}
    if types <= {"BIGINT", "INTEGER"} and not isinstance(node, exp.Div):
        # Integer +, -, *: exact in Python; DuckDB fails on overflow of the result type,
        # so any result outside it goes to the engine (and its error).
        limit = _I64 if "BIGINT" in types else _I32

        def integers(cols, n):
            out = [operation(x, y) for x, y in zip(_numbers(left, cols, n),
                                                    _numbers(right, cols, n))]
            if any(not -limit <= v < limit for v in out):
                raise _Fallback("integer overflow")
            return out
        return _Node("BIGINT" if limit == _I64 else "INTEGER", integers)
    # Otherwise only double arithmetic: integer division and DECIMAL arithmetic (exact)
    # have semantics Python floats do not reproduce.
    if "DOUBLE" not in types or not types <= set(_NUMERIC):
        raise _Fallback("non-double arithmetic")
    divide = isinstance(node, exp.Div)

    def evaluate(cols, n):
        a, b = _doubles(left, cols, n), _doubles(right, cols, n)
        if divide and any(v == 0.0 for v in b):
            raise _Fallback("division by zero")
        return _finite([operation(x, y) for x, y in zip(a, b)])
    return _Node("DOUBLE", evaluate)


def _extremum(pick, args: list[_Node]) -> _Node:
    types = {a.type for a in args}
    if not types <= set(_NUMERIC):
        raise _Fallback("non-numeric GREATEST/LEAST")
    if "DOUBLE" in types:
        result = "DOUBLE"
    elif types <= {"BIGINT", "INTEGER"}:
        result = "BIGINT" if "BIGINT" in types else "INTEGER"
    else:
        raise _Fallback("DECIMAL GREATEST/LEAST")
    convert = _doubles if result == "DOUBLE" else _numbers

    def evaluate(cols, n):
        columns = [convert(a, cols, n) for a in args]
        if result == "DOUBLE":
            for column in columns:
                _finite(column)  # NaN ordering is DuckDB's own
        return [pick(values) for values in zip(*columns)]
    return _Node(result, evaluate)


def _sqrt(value: float) -> float:
    if value < 0 or not math.isfinite(value):
        raise _Fallback("sqrt domain")
    return math.sqrt(value)


# Values for the plan-time check: integers and doubles of the sizes noise produces. No
# integer zero: a noisy count may be a divisor, and a zero divisor is left to the engine
# (the check would then compare nothing).
_SYNTHETIC_INTS = [1, -3, 7919, 2**40 + 1, -(2**45) + 7, 123456789012, 2]
_SYNTHETIC_DOUBLES = [0.0, 1.5, -2.25, 1e6 + 0.1, 3.3, 600000.0, -0.0]


def verified_projection(conn: duckdb.DuckDBPyConnection, select: exp.Select,
                        postprocess_sql: str, schema: pa.Schema) -> FastProjection | None:
    """compile_projection for noisy tables of `schema` (as the query builds them), kept
    only if it matches the engine on this plan: the same rows, bit for bit, and the same
    result types on a synthetic noisy table. Runs at planning time, once per plan; any
    doubt keeps the engine path."""
    fast = compile_projection(select, schema)
    if fast is None:
        return None
    rows = len(_SYNTHETIC_INTS)
    arrays = []
    for field in schema:
        if field.type == pa.int64():
            arrays.append(pa.array(_SYNTHETIC_INTS, type=pa.int64()))
        elif field.type == pa.float64():
            arrays.append(pa.array(_SYNTHETIC_DOUBLES, type=pa.float64()))
        else:
            arrays.append(pa.nulls(rows, type=field.type))
    synthetic = pa.Table.from_arrays(arrays, schema=schema)
    try:
        expected = run_postprocess(conn, postprocess_sql, synthetic)
    except UnsupportedQuery:
        return None
    got = fast.run(synthetic)
    if got is None or not _same_rows(got[0], expected[0]) or got[1] != expected[1]:
        return None
    return fast


def _same_rows(a: list[tuple], b: list[tuple]) -> bool:
    if len(a) != len(b):
        return False
    for row_a, row_b in zip(a, b):
        if len(row_a) != len(row_b):
            return False
        for x, y in zip(row_a, row_b):
            # type and value, and the sign of zero: what a client would see
            if type(x) is not type(y) or repr(x) != repr(y):
                return False
    return True

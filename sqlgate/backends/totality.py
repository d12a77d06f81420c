"""DuckDB's arithmetic semantics, written out for engines that differ (PostgreSQL, Spark SQL).

The rewriter's SQL relies on two DuckDB behaviours that other engines do not share:

* `TRY(expr)`: if any operation inside `expr` raises for a row (integer overflow, modulo or
  integer division by zero ...), the *whole* expression is NULL for that row, never an error.
  PostgreSQL gets this from a PL/pgSQL guard (dialects.py). Spark has no TRY(): with
  spark.sql.ansi.enabled=false it wraps on overflow and nulls only the failing operation, so
  here every risky operation contributes a *failure condition* (`try_multiply(a, b) IS NULL
  AND a IS NOT NULL AND b IS NOT NULL`, `b = 0` for modulo ...) and the TRY becomes
  `CASE WHEN <any failure> THEN NULL ELSE expr END`. Failures inside CASE branches and later
  COALESCE arguments only count where DuckDB evaluates them (it evaluates those lazily, and
  both sides of AND/OR eagerly).
* `/` is floating-point division and x/0 is +inf, -inf or NaN (not an error, not NULL), on
  integers too. PostgreSQL raises and Spark returns NULL, so division is written as a CASE.

The rewriter emits + - * inside row expressions as DuckDB's add()/subtract()/multiply() (so
DuckDB's optimizer cannot move constants across a possibly overflowing product); these are
turned back into operators first.
"""
from __future__ import annotations

from sqlglot import exp

_FUNCTION_FORMS = {"add": exp.Add, "subtract": exp.Sub, "multiply": exp.Mul}
_SPARK_CHECKED = {exp.Add: "TRY_ADD", exp.Sub: "TRY_SUBTRACT", exp.Mul: "TRY_MULTIPLY"}
_TOTAL_MARK = "sqlgate_total"


def operator_forms(tree: exp.Expression) -> exp.Expression:
    """add(a, b) -> (a + b) etc. (both are the same DuckDB function)."""
    def replace(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Anonymous) and node.name.lower() in _FUNCTION_FORMS \
                and len(node.expressions) == 2:
            left, right = (arg.transform(replace) for arg in node.expressions)
            return exp.Paren(this=_FUNCTION_FORMS[node.name.lower()](this=left, expression=right))
        return node
    return tree.transform(replace)


def duckdb_division(tree: exp.Expression, double_type: str) -> exp.Expression:
    """a / b -> DuckDB's IEEE result: +-inf or NaN when b = 0, NULL when either is NULL."""
    def special(text: str) -> exp.Expression:
        return exp.Cast(this=exp.Literal.string(text), to=exp.DataType.build(double_type))

    def replace(node: exp.Expression) -> exp.Expression:
        if not isinstance(node, exp.Div):
            return node
        a = node.this.transform(replace)
        b = node.expression.transform(replace)
        zero = exp.Literal.number(0)
        by_zero = exp.Case(ifs=[
            exp.If(this=exp.GT(this=a.copy(), expression=zero.copy()), true=special("Infinity")),
            exp.If(this=exp.LT(this=a.copy(), expression=zero.copy()), true=special("-Infinity")),
            exp.If(this=exp.EQ(this=a.copy(), expression=zero.copy()), true=special("NaN")),
        ])
        division = exp.Div(this=a, expression=b, typed=node.args.get("typed"),
                           safe=node.args.get("safe"))
        return exp.Paren(this=exp.Case(
            ifs=[exp.If(this=exp.EQ(this=b.copy(), expression=zero.copy()), true=by_zero)],
            default=division))
    return tree.transform(replace)


# ---------------------------------------------------------------- Spark TRY()


def spark_try(tree: exp.Expression) -> exp.Expression:
    """Replace every TRY(expr), innermost first, by its failure-checked CASE."""
    tries = sorted(tree.find_all(exp.Try), key=_depth, reverse=True)
    for node in tries:
        replacement = _spark_total(node.this)
        if node is tree:
            return replacement
        node.replace(replacement)
    return tree


def _spark_total(inner: exp.Expression) -> exp.Expression:
    failures = _failures(inner, None)
    if not failures:
        result = exp.Paren(this=inner)
    else:
        result = exp.Paren(this=exp.Case(ifs=[exp.If(this=_or(failures), true=exp.Null())],
                                         default=inner))
    # An inner TRY's failures make only that TRY NULL: outer ones must not look inside.
    result.meta[_TOTAL_MARK] = True
    return result


def _failures(node: exp.Expression, guard: exp.Expression | None) -> list[exp.Expression]:
    """Conditions under which evaluating `node` would raise in DuckDB (for rows where `guard`
    holds, i.e. where DuckDB evaluates it at all)."""
    if node.meta.get(_TOTAL_MARK):
        return []
    if isinstance(node, exp.Case):
        return _case_failures(node, guard)
    if isinstance(node, exp.If):  # IF(cond, a, b) as a function
        cond = node.this
        out = _failures(cond, guard)
        out += _failures(node.args["true"], _and(guard, _true(cond)))
        if node.args.get("false") is not None:
            out += _failures(node.args["false"], _and(guard, exp.Not(this=_true(cond))))
        return out
    if isinstance(node, exp.Coalesce):
        args = [node.this, *node.expressions]
        out, all_null = [], []
        for arg in args:
            out += _failures(arg, _and(guard, *all_null))
            all_null.append(exp.Is(this=_paren(arg), expression=exp.Null()))
        return out
    out = []
    for child in node.iter_expressions():
        out += _failures(child, guard)
    failure = _own_failure(node)
    if failure is not None:
        out.append(_and(guard, failure))
    return out


def _case_failures(node: exp.Case, guard) -> list[exp.Expression]:
    operand = node.this
    out = _failures(operand, guard) if operand is not None else []
    earlier: list[exp.Expression] = []
    for branch in node.args.get("ifs") or []:
        reached = _and(guard, *[exp.Not(this=_true(c)) for c in earlier])
        condition = branch.this
        out += _failures(condition, reached)
        matches = condition if operand is None else exp.EQ(this=_paren(operand),
                                                             expression=_paren(condition))
        out += _failures(branch.args["true"], _and(reached, _true(matches)))
        earlier.append(matches)
    default = node.args.get("default")
    if default is not None:
        out += _failures(default, _and(guard, *[exp.Not(this=_true(c)) for c in earlier]))
    return out


def _own_failure(node: exp.Expression) -> exp.Expression | None:
    checked = _SPARK_CHECKED.get(type(node))
    if checked is not None:
        a, b = _paren(node.this), _paren(node.expression)
        return exp.and_(exp.Is(this=exp.Anonymous(this=checked, expressions=[a, b]),
                               expression=exp.Null()),
                        exp.Not(this=exp.Is(this=a.copy(), expression=exp.Null())),
                        exp.Not(this=exp.Is(this=b.copy(), expression=exp.Null())))
    if isinstance(node, (exp.Mod, exp.IntDiv)):
        a, b = _paren(node.this), _paren(node.expression)
        return exp.and_(exp.EQ(this=b, expression=exp.Literal.number(0)),
                        exp.Not(this=exp.Is(this=a, expression=exp.Null())))
    return None


def _true(condition: exp.Expression) -> exp.Expression:
    return exp.Coalesce(this=_paren(condition), expressions=[exp.false()])


def _paren(node: exp.Expression) -> exp.Expression:
    node = node.copy()
    return node if isinstance(node, (exp.Column, exp.Literal, exp.Paren)) else exp.Paren(this=node)


def _and(*parts: exp.Expression | None) -> exp.Expression | None:
    present = [p for p in parts if p is not None]
    if not present:
        return None
    return exp.and_(*[p.copy() for p in present]) if len(present) > 1 else present[0].copy()


def _or(parts: list[exp.Expression]) -> exp.Expression:
    return exp.or_(*[exp.Paren(this=p) for p in parts]) if len(parts) > 1 else parts[0]


def _depth(node: exp.Expression) -> int:
    depth = 0
    while node.parent is not None:
        node = node.parent
        depth += 1
    return depth

"""Row-level expressions (WHERE predicates, arguments of aggregates).

Only an allow-list of total, deterministic operators and functions passes; everything is
then made total (privacy rule 6): casts become TRY_CAST and whole predicates run inside
DuckDB's TRY(), so a bad value can never raise an error whose text or occurrence depends
on private data.
"""
from __future__ import annotations

from sqlglot import exp

from sqlgate.errors import PolicyRefused, UnsupportedQuery

_STRUCTURAL = (
    exp.Column, exp.Identifier, exp.Literal, exp.Boolean, exp.Null, exp.Paren, exp.DataType,
    exp.DataTypeParam, exp.Var, exp.Interval, exp.Tuple,
)
_OPERATORS = (
    exp.And, exp.Or, exp.Not, exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Is,
    exp.In, exp.Between, exp.Like, exp.ILike, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Neg,
    exp.Mod, exp.IntDiv, exp.DPipe, exp.NullSafeEQ, exp.NullSafeNEQ,
)
_FUNCTIONS = (
    exp.Cast, exp.TryCast, exp.Case, exp.If, exp.Coalesce, exp.Abs, exp.Lower, exp.Upper,
    exp.Length, exp.Round, exp.Floor, exp.Ceil, exp.Substring, exp.Trim, exp.Extract,
    exp.Year, exp.Month, exp.Day, exp.DateTrunc, exp.TimestampTrunc, exp.Concat, exp.Greatest,
    exp.Least, exp.Nullif, exp.Sign, exp.StartsWith, exp.CurrentDate,
)
ALLOWED_ROW_NODES = _STRUCTURAL + _OPERATORS + _FUNCTIONS


def check_row_expression(node: exp.Expression, scope, where: str) -> exp.Expression:
    """Validate a row-level expression; return a copy whose columns are qualified refs
    (`scope` is a rewriter.scope.QueryScope)."""
    for sub in node.walk():
        if isinstance(sub, exp.AggFunc):
            raise UnsupportedQuery(f"aggregate {sub.sql()} is not allowed in {where}")
        if isinstance(sub, (exp.Subquery, exp.Select, exp.Exists)):
            raise UnsupportedQuery(f"subqueries are not supported in {where}")
        if isinstance(sub, exp.Window):
            raise PolicyRefused(f"window functions are not allowed in {where}: they expose "
                                "individual rows")
        if isinstance(sub, (exp.Placeholder, exp.Parameter)):
            raise UnsupportedQuery("unbound query parameter; bind all parameters before running")
        if isinstance(sub, exp.Star):
            raise UnsupportedQuery(f"* is not allowed in {where}")
        if not isinstance(sub, ALLOWED_ROW_NODES):
            raise UnsupportedQuery(f"{_describe(sub)} is not supported in {where}: only "
                                   "comparisons, boolean logic, arithmetic and simple total "
                                   "functions are allowed on private rows")
        if isinstance(sub, (exp.Like, exp.ILike)) and not isinstance(sub.expression, exp.Literal):
            raise UnsupportedQuery("LIKE patterns must be string literals")
    if isinstance(node, exp.Column):
        return scope.expr(scope.resolve(node))
    copy = node.copy()
    for column in list(copy.find_all(exp.Column)):
        column.replace(scope.expr(scope.resolve(column)))
    return _total(copy)


def _total(node: exp.Expression) -> exp.Expression:
    """Replace casts by TRY_CAST (the rest is made total by TRY() around the predicate)."""
    for cast in list(node.find_all(exp.Cast)):
        if not isinstance(cast, exp.TryCast):
            cast.replace(exp.TryCast(this=cast.this, to=cast.to))
    return _checked_arithmetic(node)


# DuckDB's optimizer rewrites `x * c > d` to `x > d / c` (and likewise for + and -), which is
# only equal when x * c does not overflow: an overflowing row would then pass the predicate
# instead of raising inside TRY() (-> NULL), and the answer would depend on the engine. The
# function forms compute the same values but are not moved, so overflow -> NULL everywhere.
_FUNCTION_FORMS = {exp.Add: "add", exp.Sub: "subtract", exp.Mul: "multiply"}


def _checked_arithmetic(node: exp.Expression) -> exp.Expression:
    def replace(sub: exp.Expression) -> exp.Expression:
        name = _FUNCTION_FORMS.get(type(sub))
        if name is None or isinstance(sub.this, exp.Interval) \
                or isinstance(sub.expression, exp.Interval):
            return sub
        return exp.Anonymous(this=name, expressions=[sub.this, sub.expression])
    return node.transform(replace)


def total_predicate(predicate: exp.Expression) -> exp.Expression:
    """TRY() turns any runtime error of the predicate into NULL, and NULL into FALSE."""
    return exp.Coalesce(this=exp.Anonymous(this="TRY", expressions=[predicate]),
                        expressions=[exp.false()])


def _describe(node: exp.Expression) -> str:
    if isinstance(node, exp.Anonymous):
        return f"function {node.name}()"
    if isinstance(node, exp.Func):
        return f"function {node.sql_name()}()"
    return f"{type(node).__name__} expression"

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


_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
_NUMERIC = ("int", "float")


def total_condition(predicate: exp.Expression, scope) -> exp.Expression:
    """A WHERE or JOIN ... ON condition made total, with the conjuncts that cannot fail bare.

    `col <op> literal` (literal of the column's declared type) and `col <op> col` (two columns
    of one declared type) can raise on no row, so they need no TRY(); bare, the optimizer
    pushes them into the scans and through joins (zone maps, join filters, hash joins on the
    unit), where a predicate inside TRY() was evaluated after the join on every joined row
    (3-8x slower on the TPC-H lineitem queries). Bare unit equalities in ON are also what
    rewriter.scope reads to link joined tables to one unit. The rest is guarded together, as
    total_predicate does. In WHERE and in ON (inner or left) NULL and FALSE both mean "no
    row" / "no match", so splitting `a AND b` into `a AND COALESCE(TRY(b), FALSE)` keeps
    exactly the same rows."""
    bare, guarded = [], []
    for part in conjuncts(predicate):
        (bare if _cannot_fail(part, scope) else guarded).append(part)
    if guarded:
        bare.append(total_predicate(exp.and_(*guarded)))
    return exp.and_(*bare) if len(bare) > 1 else bare[0]


def conjuncts(node: exp.Expression):
    """The operands of a chain of ANDs (through parentheses)."""
    if isinstance(node, exp.And):
        yield from conjuncts(node.this)
        yield from conjuncts(node.expression)
    elif isinstance(node, exp.Paren):
        yield from conjuncts(node.this)
    else:
        yield node


def _cannot_fail(node: exp.Expression, scope) -> bool:
    if isinstance(node, (exp.In, exp.Between)) and isinstance(node.this, exp.Column) \
            and not node.args.get("query"):
        col_type = _column_type(node.this, scope)
        values = (node.expressions if isinstance(node, exp.In)
                  else [node.args.get("low"), node.args.get("high")])
        return col_type is not None and bool(values) and \
            all(v is not None and _literal_of_type(v, col_type) for v in values)
    if not isinstance(node, _COMPARISONS):
        return False
    left, right = node.this, node.expression
    if not isinstance(left, exp.Column):
        left, right = right, left
    if not isinstance(left, exp.Column):
        return False
    left_type = _column_type(left, scope)
    if left_type is None:
        return False
    if isinstance(right, exp.Column):
        right_type = _column_type(right, scope)
        return right_type == left_type or (left_type in _NUMERIC and right_type in _NUMERIC)
    return _literal_of_type(right, left_type)


def _column_type(column: exp.Column, scope) -> str | None:
    try:
        meta = scope.meta(scope.resolve(column))
    except Exception:  # noqa: BLE001 - unresolvable here: treat as unsafe (keep TRY)
        return None
    return None if meta is None else meta.type


_INT64 = 2 ** 63 - 1


def _literal_of_type(node: exp.Expression, col_type: str) -> bool:
    if col_type == "int":
        # Only plain integers: a decimal literal makes DuckDB cast the BIGINT column to a
        # DECIMAL(38, s), which fails on large values, i.e. on the data.
        if not (isinstance(node, exp.Literal) and node.is_number):
            return False
        text = node.this.lstrip("+-")
        return text.isdigit() and int(text) <= _INT64
    if col_type == "float":
        return isinstance(node, exp.Literal) and node.is_number
    if col_type == "string":
        return isinstance(node, exp.Literal) and node.is_string
    if col_type == "bool":
        return isinstance(node, exp.Boolean)
    if col_type == "date":
        # DATE '...' arrives as a (TRY_)CAST of a string literal: a constant, folded once;
        # if the text is no date it fails (or is NULL) whatever the data.
        return (isinstance(node, (exp.Cast, exp.TryCast)) and isinstance(node.this, exp.Literal)
                and node.this.is_string and node.to.is_type(exp.DataType.Type.DATE))
    return False

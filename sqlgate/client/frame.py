"""A lazy, pandas-like frame over one dataset table, compiled to the SQL the server accepts.

Nothing runs until `.to_pandas()`: verbs build a sqlglot tree, `.sql` shows it, `.explain()`
asks the server for cost and accuracy (spending nothing). Only aggregates can be answered,
so the verbs that produce results are aggregations (count, sum, mean, std, var, min, max,
median, quantile, value_counts, groupby(...).agg(...)); everything else only narrows what
they aggregate (column selection, boolean filters).

    t = client.table("patients")
    t[t.age >= 18].groupby("region").agg(n=("age", "count"), mean_bmi=("bmi", "mean"))
"""
from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from sqlglot import exp

from sqlgate.errors import InvalidParameter, UndefinedColumn

if TYPE_CHECKING:  # pragma: no cover
    from sqlgate.client.client import Client, Explanation

DIALECT = "postgres"   # what the server's rewriter reads

# Aggregation name -> builder of the aggregate over one column expression.
_AGGREGATES = {
    "count": lambda col: exp.Count(this=col),
    "sum": lambda col: exp.Sum(this=col),
    "mean": lambda col: exp.Avg(this=col),
    "avg": lambda col: exp.Avg(this=col),
    "std": lambda col: exp.Stddev(this=col),
    "var": lambda col: exp.Variance(this=col),
    "min": lambda col: exp.Min(this=col),
    "max": lambda col: exp.Max(this=col),
    "median": lambda col: exp.Median(this=col),
}
AGGREGATIONS = tuple(sorted(_AGGREGATES)) + ("quantile", "size")


def literal(value: Any) -> exp.Expression:
    """A SQL literal for a Python value, built by sqlglot (quotes are escaped there)."""
    if value is None or isinstance(value, (bool, int, str)):
        return exp.convert(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidParameter("NaN and infinite values cannot be used in a query")
        return exp.convert(value)
    if isinstance(value, dt.datetime):
        return exp.cast(exp.Literal.string(value.isoformat(sep=" ")), "TIMESTAMP")
    if isinstance(value, dt.date):
        return exp.cast(exp.Literal.string(value.isoformat()), "DATE")
    if hasattr(value, "item"):   # numpy scalars
        return literal(value.item())
    raise InvalidParameter(f"values of type {type(value).__name__} cannot be used in a query")


def _operand(value: Any) -> exp.Expression:
    return value.node if isinstance(value, Expr) else literal(value)


class Expr:
    """A column expression; operators build SQL, they never compare Python values."""

    __hash__ = object.__hash__

    def __init__(self, node: exp.Expression):
        self.node = node

    def _binary(self, cls, other, *, reverse=False) -> "Expr":
        left, right = (_operand(other), self.node) if reverse else (self.node, _operand(other))
        return Expr(cls(this=_wrap(left), expression=_wrap(right)))

    def __eq__(self, other):  # type: ignore[override]
        if other is None:
            return self.isna()
        return self._binary(exp.EQ, other)

    def __ne__(self, other):  # type: ignore[override]
        if other is None:
            return self.notna()
        return self._binary(exp.NEQ, other)

    def __lt__(self, other): return self._binary(exp.LT, other)
    def __le__(self, other): return self._binary(exp.LTE, other)
    def __gt__(self, other): return self._binary(exp.GT, other)
    def __ge__(self, other): return self._binary(exp.GTE, other)
    def __add__(self, other): return self._binary(exp.Add, other)
    def __radd__(self, other): return self._binary(exp.Add, other, reverse=True)
    def __sub__(self, other): return self._binary(exp.Sub, other)
    def __rsub__(self, other): return self._binary(exp.Sub, other, reverse=True)
    def __mul__(self, other): return self._binary(exp.Mul, other)
    def __rmul__(self, other): return self._binary(exp.Mul, other, reverse=True)
    def __truediv__(self, other): return self._binary(exp.Div, other)
    def __rtruediv__(self, other): return self._binary(exp.Div, other, reverse=True)
    def __and__(self, other): return self._binary(exp.And, other)
    def __rand__(self, other): return self._binary(exp.And, other, reverse=True)
    def __or__(self, other): return self._binary(exp.Or, other)
    def __ror__(self, other): return self._binary(exp.Or, other, reverse=True)

    def __invert__(self) -> "Expr":
        return Expr(exp.Not(this=_wrap(self.node)))

    def __neg__(self) -> "Expr":
        return Expr(exp.Neg(this=_wrap(self.node)))

    def __bool__(self):
        raise TypeError("a column expression has no truth value; combine conditions with "
                        "&, | and ~ (not and/or/not)")

    def isin(self, values: Iterable[Any]) -> "Expr":
        items = [literal(v) for v in values]
        if not items:
            raise InvalidParameter("isin needs at least one value")
        return Expr(exp.In(this=_wrap(self.node), expressions=items))

    def between(self, low: Any, high: Any) -> "Expr":
        return Expr(exp.Between(this=_wrap(self.node), low=literal(low), high=literal(high)))

    def isna(self) -> "Expr":
        return Expr(exp.Is(this=_wrap(self.node), expression=exp.Null()))

    def notna(self) -> "Expr":
        return Expr(exp.Not(this=exp.Is(this=_wrap(self.node), expression=exp.Null())))

    def like(self, pattern: str) -> "Expr":
        if not isinstance(pattern, str):
            raise InvalidParameter("like needs a string pattern")
        return Expr(exp.Like(this=_wrap(self.node), expression=exp.Literal.string(pattern)))

    def sql(self) -> str:
        return self.node.sql(dialect=DIALECT)

    def __repr__(self) -> str:
        return f"<sqlgate expression {self.sql()}>"


def _wrap(node: exp.Expression) -> exp.Expression:
    # Parenthesize compound operands so the generated SQL keeps Python's grouping.
    if isinstance(node, (exp.Binary, exp.Not, exp.Neg, exp.In, exp.Between, exp.Is)):
        return exp.Paren(this=node)
    return node


@dataclass(frozen=True)
class TableInfo:
    """Public metadata of one table (from GET /v1/datasets/{name})."""

    dataset: str
    table: str
    columns: Mapping[str, Mapping[str, Any]]
    privacy_unit: str | None = None

    def column(self, name: str) -> str:
        if not isinstance(name, str):
            raise InvalidParameter("column names must be strings")
        for known in self.columns:
            if known.lower() == name.lower():
                return known
        raise UndefinedColumn(f"column '{name}' does not exist in table "
                              f"'{self.dataset}.{self.table}'")

    def aggregatable(self) -> list[str]:
        """Numeric columns with declared bounds: the ones sums and means accept."""
        return [name for name, spec in self.columns.items()
                if spec.get("type") in ("int", "float") and "lower" in spec and "upper" in spec
                and name != self.privacy_unit]


@dataclass(frozen=True)
class Query:
    """One aggregate query: `.sql`, `.explain()` (no cost), `.to_pandas()` (runs, charges)."""

    client: "Client" = field(repr=False)
    tree: exp.Select

    @property
    def sql(self) -> str:
        return self.tree.sql(dialect=DIALECT)

    def explain(self, epsilon: float | None = None) -> "Explanation":
        return self.client.explain(self.sql, epsilon=epsilon)

    def to_pandas(self, epsilon: float | None = None):
        return self.client.sql(self.sql, epsilon=epsilon)

    def __repr__(self) -> str:
        return f"<sqlgate query {self.sql}>"


@dataclass(frozen=True)
class LazyFrame:
    client: "Client" = field(repr=False)
    info: TableInfo
    selected: tuple[str, ...] | None = None
    where: exp.Expression | None = None

    # ------------------------------------------------------------ narrowing

    def __getitem__(self, key):
        if isinstance(key, str):
            return Column(self, self.info.column(key))
        if isinstance(key, Expr):
            return self.filter(key)
        if isinstance(key, (list, tuple)):
            if not key:
                raise InvalidParameter("select at least one column")
            return replace(self, selected=tuple(self.info.column(k) for k in key))
        raise InvalidParameter("index a frame with a column name, a list of names or a "
                               "boolean expression")

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return Column(self, self.info.column(name))
        except UndefinedColumn:
            raise AttributeError(name) from None

    def filter(self, condition: Expr) -> "LazyFrame":
        if not isinstance(condition, Expr):
            raise InvalidParameter("filter with a boolean column expression, e.g. t.age > 30")
        node = condition.node if self.where is None else \
            exp.And(this=_wrap(self.where), expression=_wrap(condition.node))
        return replace(self, where=node)

    @property
    def columns(self) -> list[str]:
        return list(self.selected or self.info.columns)

    # ------------------------------------------------------------ aggregations

    def groupby(self, by: str | Sequence[str]) -> "GroupBy":
        keys = (by,) if isinstance(by, str) else tuple(by)
        if not keys:
            raise InvalidParameter("groupby needs at least one column")
        return GroupBy(self, tuple(self.info.column(k) for k in keys))

    def count(self) -> Query:
        if self.selected is None:
            return self._query([exp.alias_(exp.Count(this=exp.Star()), "count")])
        return self._query([exp.alias_(exp.Count(this=exp.column(c)), c)
                            for c in self.selected])

    def size(self) -> Query:
        return self._query([exp.alias_(exp.Count(this=exp.Star()), "count")])

    def sum(self) -> Query: return self._per_column("sum")
    def mean(self) -> Query: return self._per_column("mean")
    def std(self) -> Query: return self._per_column("std")
    def var(self) -> Query: return self._per_column("var")
    def min(self) -> Query: return self._per_column("min")
    def max(self) -> Query: return self._per_column("max")
    def median(self) -> Query: return self._per_column("median")

    def quantile(self, q: float | Sequence[float] = 0.5) -> Query:
        qs = _quantiles(q)
        outputs = []
        for column in self._value_columns():
            for value in qs:
                alias = column if len(qs) == 1 else f"{column}_q{_fraction_name(value)}"
                outputs.append(exp.alias_(_quantile(exp.column(column), value), alias))
        return self._query(outputs)

    def agg(self, spec: Any = None, **named: Any) -> Query:
        return self._query(_aggregations(self, spec, named))

    def value_counts(self) -> Query:
        if self.selected is None or len(self.selected) != 1:
            raise InvalidParameter("value_counts needs exactly one column, e.g. "
                                   "t['region'].value_counts()")
        return _value_counts(self, self.selected[0])

    # ------------------------------------------------------------ running

    @property
    def sql(self) -> str:
        return self._select([exp.column(c) for c in self.columns]).sql(dialect=DIALECT)

    def explain(self, epsilon: float | None = None):
        return self.client.explain(self.sql, epsilon=epsilon)

    def to_pandas(self, epsilon: float | None = None):
        """Rows are never released: the server refuses this unless it is an aggregate."""
        return self.client.sql(self.sql, epsilon=epsilon)

    def __repr__(self) -> str:
        return f"<sqlgate frame {self.info.dataset}.{self.info.table}: {self.sql}>"

    # ------------------------------------------------------------ internals

    def _value_columns(self) -> list[str]:
        columns = list(self.selected) if self.selected is not None else self.info.aggregatable()
        if not columns:
            raise InvalidParameter(f"table '{self.info.dataset}.{self.info.table}' has no "
                                   f"numeric columns with declared bounds; select columns first")
        return columns

    def _per_column(self, func: str) -> Query:
        return self._query([exp.alias_(_AGGREGATES[func](exp.column(c)), c)
                            for c in self._value_columns()])

    def _select(self, outputs: list[exp.Expression]) -> exp.Select:
        select = exp.select(*outputs).from_(exp.table_(self.info.table, db=self.info.dataset))
        if self.where is not None:
            select = select.where(self.where)
        return select

    def _query(self, outputs: list[exp.Expression], keys: Sequence[str] = ()) -> Query:
        select = self._select([exp.column(k) for k in keys] + list(outputs))
        if keys:
            select = select.group_by(*[exp.column(k) for k in keys]) \
                .order_by(*[exp.column(k) for k in keys])
        return Query(self.client, select)


class Column(Expr):
    """One column of a frame: an expression for filters and a series for aggregates."""

    __hash__ = object.__hash__

    def __init__(self, frame: LazyFrame, name: str):
        super().__init__(exp.column(name))
        self.frame = frame
        self.name = name

    def _series(self) -> LazyFrame:
        return replace(self.frame, selected=(self.name,))

    def count(self) -> Query: return self._series().count()
    def sum(self) -> Query: return self._series().sum()
    def mean(self) -> Query: return self._series().mean()
    def std(self) -> Query: return self._series().std()
    def var(self) -> Query: return self._series().var()
    def min(self) -> Query: return self._series().min()
    def max(self) -> Query: return self._series().max()
    def median(self) -> Query: return self._series().median()

    def quantile(self, q: float | Sequence[float] = 0.5) -> Query:
        return self._series().quantile(q)

    def value_counts(self) -> Query:
        return _value_counts(self.frame, self.name)

    def agg(self, funcs: str | Sequence[str]) -> Query:
        return self._series().agg({self.name: funcs})

    def __repr__(self) -> str:
        return f"<sqlgate column {self.frame.info.dataset}.{self.frame.info.table}.{self.name}>"


@dataclass(frozen=True)
class GroupBy:
    frame: LazyFrame
    keys: tuple[str, ...]
    selected: tuple[str, ...] | None = None

    def __getitem__(self, key) -> "GroupBy":
        names = (key,) if isinstance(key, str) else tuple(key)
        return replace(self, selected=tuple(self.frame.info.column(k) for k in names))

    def agg(self, spec: Any = None, **named: Any) -> Query:
        if spec is None and not named and self.selected is None:
            raise InvalidParameter("agg needs aggregations, e.g. agg(n=('age', 'count'))")
        if isinstance(spec, (str, list, tuple)) and not named:
            spec = {c: spec for c in self._values()}
        return self.frame._query(_aggregations(self.frame, spec, named), self.keys)

    def size(self) -> Query:
        return self.frame._query([exp.alias_(exp.Count(this=exp.Star()), "count")], self.keys)

    def count(self) -> Query:
        if self.selected is None:
            return self.size()
        return self.agg("count")

    def sum(self) -> Query: return self.agg("sum")
    def mean(self) -> Query: return self.agg("mean")
    def std(self) -> Query: return self.agg("std")
    def var(self) -> Query: return self.agg("var")
    def min(self) -> Query: return self.agg("min")
    def max(self) -> Query: return self.agg("max")
    def median(self) -> Query: return self.agg("median")

    def quantile(self, q: float | Sequence[float] = 0.5) -> Query:
        qs = _quantiles(q)
        outputs = []
        for column in self._values():
            for value in qs:
                alias = column if len(qs) == 1 else f"{column}_q{_fraction_name(value)}"
                outputs.append(exp.alias_(_quantile(exp.column(column), value), alias))
        return self.frame._query(outputs, self.keys)

    def _values(self) -> list[str]:
        if self.selected is not None:
            return list(self.selected)
        return [c for c in self.frame._value_columns() if c not in self.keys]


def _aggregations(frame: LazyFrame, spec: Any, named: Mapping[str, Any]) -> list[exp.Expression]:
    """Outputs for pandas-style agg: {"col": "mean" | [..]} and/or name=("col", "func")."""
    outputs: list[exp.Expression] = []
    if spec is not None:
        if not isinstance(spec, Mapping):
            raise InvalidParameter("agg takes a dict {column: function or [functions]} or "
                                   "named aggregations name=(column, function)")
        for column, funcs in spec.items():
            name = frame.info.column(column)
            many = not isinstance(funcs, str)
            for func in ([funcs] if isinstance(funcs, str) else list(funcs)):
                outputs.append(exp.alias_(_aggregate(name, func), f"{name}_{func}" if many
                                          else name))
    for alias, target in named.items():
        if isinstance(target, str) and target == "size":
            outputs.append(exp.alias_(exp.Count(this=exp.Star()), alias))
            continue
        if not (isinstance(target, tuple) and len(target) == 2):
            raise InvalidParameter(f"named aggregation '{alias}' must be (column, function)")
        column, func = target
        outputs.append(exp.alias_(_aggregate(frame.info.column(column), func), alias))
    if not outputs:
        raise InvalidParameter("agg needs at least one aggregation")
    return outputs


def _aggregate(column: str, func: Any) -> exp.Expression:
    if func == "size":
        return exp.Count(this=exp.Star())
    if isinstance(func, str) and func.startswith("quantile_"):
        return _quantile(exp.column(column), float(func.split("_", 1)[1]))
    builder = _AGGREGATES.get(func) if isinstance(func, str) else None
    if builder is None:
        raise InvalidParameter(f"unknown aggregation {func!r}; use one of "
                               f"{', '.join(AGGREGATIONS)}")
    return builder(exp.column(column))


def _quantile(column: exp.Expression, q: float) -> exp.Expression:
    return exp.WithinGroup(this=exp.PercentileCont(this=exp.Literal.number(repr(q))),
                           expression=exp.Order(expressions=[exp.Ordered(this=column)]))


def _quantiles(q: float | Sequence[float]) -> list[float]:
    values = [q] if isinstance(q, (int, float)) and not isinstance(q, bool) else list(q)
    checked = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not 0 <= value <= 1:
            raise InvalidParameter("quantiles must be numbers between 0 and 1")
        checked.append(float(value))
    if not checked:
        raise InvalidParameter("quantile needs at least one value")
    return checked


def _fraction_name(value: float) -> str:
    # 0.25 -> "25", 0.5 -> "50", 0.999 -> "99_9"
    return f"{value * 100:g}".replace(".", "_")


def _value_counts(frame: LazyFrame, column: str) -> Query:
    select = frame._select([exp.column(column),
                            exp.alias_(exp.Count(this=exp.Star()), "count")])
    select = select.group_by(exp.column(column)).order_by(
        exp.Ordered(this=exp.column("count"), desc=True, nulls_first=True), exp.column(column))
    return Query(frame.client, select)

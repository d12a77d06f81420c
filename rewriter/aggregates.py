"""Recognise the analyst's aggregates and reduce them to base measures.

Every supported aggregate is post-processing of a few noisy sums: COUNT(*) and COUNT(col)
are counts, COUNT(DISTINCT unit) counts units, SUM is a clamped sum, AVG is sum/count and
VAR/STDDEV add a centred sum of squares.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from sqlgate.errors import PolicyRefused, UnsupportedQuery

_VARIANCE = (exp.Variance, exp.VariancePop)
_STDDEV = (exp.Stddev, exp.StddevSamp, exp.StddevPop)


@dataclass(frozen=True)
class BaseMeasure:
    kind: str  # count | count_col | units | sum | sum_sq | quantile
    column: str | None = None
    alpha: float | None = None


@dataclass(frozen=True)
class AggregateUse:
    """One aggregate call found in the query, reduced to base measures."""

    node: exp.Expression
    function: str  # count | count_col | units | sum | avg | var_samp | var_pop | std_samp | std_pop | quantile
    column: str | None
    alpha: float | None = None

    @property
    def needs(self) -> tuple[BaseMeasure, ...]:
        col = self.column
        if self.function == "count":
            return (BaseMeasure("count"),)
        if self.function == "count_col":
            return (BaseMeasure("count_col", col),)
        if self.function == "units":
            return (BaseMeasure("units"),)
        if self.function == "sum":
            return (BaseMeasure("sum", col),)
        if self.function == "quantile":
            return (BaseMeasure("quantile", col, self.alpha),)
        if self.function == "avg":
            return (BaseMeasure("sum", col), BaseMeasure("count_col", col))
        return (BaseMeasure("sum", col), BaseMeasure("count_col", col), BaseMeasure("sum_sq", col))


def classify_aggregate(node: exp.Expression, scope) -> AggregateUse:
    """Reduce one aggregate call to an AggregateUse (scope: rewriter.scope.QueryScope)."""
    quantile = _quantile_use(node, scope)
    if quantile is not None:
        return quantile
    if isinstance(node, exp.WithinGroup):
        node = node.this
    name = node.sql_name() if isinstance(node, exp.Func) else type(node).__name__
    if name.upper() in ("PERCENTILE_DISC", "MODE"):
        raise UnsupportedQuery(f"{name}() is not supported; use PERCENTILE_CONT, MEDIAN, "
                               "QUANTILE_CONT, MIN or MAX")
    arg = node.this
    if isinstance(node, exp.Count):
        if isinstance(arg, exp.Star) or arg is None:
            return AggregateUse(node, "count", None)
        if isinstance(arg, exp.Distinct):
            inner = arg.expressions
            if len(inner) == 1 and isinstance(inner[0], exp.Column):
                column = scope.resolve(inner[0])
                if column == scope.unit_ref or scope.is_unit(column):
                    return AggregateUse(node, "units", column)
            raise UnsupportedQuery("COUNT(DISTINCT ...) is supported only on the privacy unit "
                                   f"column '{scope.unit_ref.split('.')[1]}'")
        column = _plain_column(arg, name, scope)
        return AggregateUse(node, "count_col", column)
    if isinstance(node, (exp.Sum, exp.Avg) + _VARIANCE + _STDDEV):
        if isinstance(arg, exp.Distinct):
            raise UnsupportedQuery(f"{name}(DISTINCT ...) is not supported")
        column = _bounded_numeric(arg, name, scope)
        if isinstance(node, exp.Sum):
            return AggregateUse(node, "sum", column)
        if isinstance(node, exp.Avg):
            return AggregateUse(node, "avg", column)
        if isinstance(node, exp.VariancePop):
            return AggregateUse(node, "var_pop", column)
        if isinstance(node, exp.Variance):
            return AggregateUse(node, "var_samp", column)
        if isinstance(node, exp.StddevPop):
            return AggregateUse(node, "std_pop", column)
        return AggregateUse(node, "std_samp", column)
    raise UnsupportedQuery(f"aggregate {name}() is not supported; supported: COUNT, SUM, AVG, "
                           "VARIANCE/VAR_SAMP/VAR_POP, STDDEV/STDDEV_SAMP/STDDEV_POP, MIN, MAX, "
                           "MEDIAN, PERCENTILE_CONT, QUANTILE_CONT")


def _quantile_use(node: exp.Expression, scope) -> AggregateUse | None:
    """MIN, MAX, MEDIAN, PERCENTILE_CONT(a) WITHIN GROUP (ORDER BY c), QUANTILE_CONT(c, a)."""
    if isinstance(node, exp.WithinGroup) and isinstance(node.this, exp.PercentileCont):
        alpha = _alpha(node.this.this)
        order = node.expression.expressions if node.expression else []
        if len(order) != 1:
            raise UnsupportedQuery("PERCENTILE_CONT needs ORDER BY one column")
        column = _bounded_numeric(order[0].this, "PERCENTILE_CONT", scope)
        return AggregateUse(node, "quantile", column, alpha)
    if isinstance(node, (exp.Min, exp.Max, exp.Median)):
        name = node.sql_name()
        column = _bounded_numeric(node.this, name, scope)
        alpha = {exp.Min: 0.0, exp.Max: 1.0, exp.Median: 0.5}[type(node)]
        return AggregateUse(node, "quantile", column, alpha)
    if isinstance(node, exp.Anonymous) and node.name.lower() in ("quantile_cont", "quantile"):
        if len(node.expressions) != 2:
            raise UnsupportedQuery(f"{node.name}(column, fraction) takes two arguments")
        column = _bounded_numeric(node.expressions[0], node.name.upper(), scope)
        return AggregateUse(node, "quantile", column, _alpha(node.expressions[1]))
    if isinstance(node, exp.Quantile):
        column = _bounded_numeric(node.this, "QUANTILE", scope)
        return AggregateUse(node, "quantile", column, _alpha(node.args.get("quantile")))
    return None


def _alpha(node) -> float:
    if not (isinstance(node, exp.Literal) and not node.is_string):
        raise UnsupportedQuery("the quantile fraction must be a number literal between 0 and 1")
    alpha = float(node.this)
    if not 0.0 <= alpha <= 1.0:
        raise UnsupportedQuery("the quantile fraction must be between 0 and 1")
    return alpha


def _bounded_numeric(arg, name: str, scope) -> str:
    column = _plain_column(arg, name, scope)
    meta = scope.meta(column)
    short = column.split(".", 1)[1]
    if scope.is_unit(column):
        raise PolicyRefused(f"{name}() over the privacy unit column '{short}' is not allowed")
    if not meta.is_numeric:
        raise UnsupportedQuery(f"{name}() needs a numeric column; '{short}' is {meta.type}")
    if not meta.has_bounds:
        raise PolicyRefused(f"column '{short}' has no declared bounds, so {name}() cannot be "
                            "computed with differential privacy; the data owner must declare "
                            "lower and upper bounds in the dataset metadata")
    return column


def is_aggregate(node: exp.Expression) -> bool:
    if isinstance(node, exp.WithinGroup):
        return True
    if isinstance(node, exp.Anonymous) and node.name.lower() in ("quantile_cont", "quantile"):
        return True
    return isinstance(node, exp.AggFunc) and not isinstance(node.parent, exp.WithinGroup)


def _plain_column(arg: exp.Expression | None, name: str, scope) -> str:
    if isinstance(arg, exp.Paren):
        arg = arg.this
    if not isinstance(arg, exp.Column):
        raise UnsupportedQuery(f"the argument of {name}() must be a single column with declared "
                               "bounds; expressions inside aggregates are not supported yet")
    return scope.resolve(arg)

"""Recognise the analyst's aggregates and reduce them to base measures.

Every supported aggregate is post-processing of a few noisy sums: COUNT(*) and COUNT(col)
are counts, COUNT(DISTINCT unit) counts units, SUM is a clamped sum, AVG is sum/count and
VAR/STDDEV add a centred sum of squares.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from sqlgate.errors import PolicyRefused, UnsupportedQuery
from rewriter.rowexpr import TableScope

_VARIANCE = (exp.Variance, exp.VariancePop)
_STDDEV = (exp.Stddev, exp.StddevSamp, exp.StddevPop)
_QUANTILE_LIKE = (exp.Min, exp.Max, exp.Median, exp.Quantile)


@dataclass(frozen=True)
class BaseMeasure:
    kind: str  # count | count_col | units | sum | sum_sq
    column: str | None = None


@dataclass(frozen=True)
class AggregateUse:
    """One aggregate call found in the query, reduced to base measures."""

    node: exp.Expression
    function: str  # count | count_col | units | sum | avg | var_samp | var_pop | std_samp | std_pop
    column: str | None

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
        if self.function == "avg":
            return (BaseMeasure("sum", col), BaseMeasure("count_col", col))
        return (BaseMeasure("sum", col), BaseMeasure("count_col", col), BaseMeasure("sum_sq", col))


def classify_aggregate(node: exp.AggFunc, scope: TableScope) -> AggregateUse:
    name = node.sql_name()
    if isinstance(node, _QUANTILE_LIKE) or name.upper() in ("PERCENTILE_CONT", "PERCENTILE_DISC",
                                                             "APPROX_QUANTILE", "MODE"):
        raise UnsupportedQuery(f"{name}() is not supported yet: minimum, maximum and quantiles "
                               "need a quantile mechanism over declared bounds")
    arg = node.this
    if isinstance(node, exp.Count):
        if isinstance(arg, exp.Star) or arg is None:
            return AggregateUse(node, "count", None)
        if isinstance(arg, exp.Distinct):
            inner = arg.expressions
            if len(inner) == 1 and isinstance(inner[0], exp.Column):
                column = scope.resolve(inner[0])
                if column == scope.meta.privacy_unit:
                    return AggregateUse(node, "units", column)
            raise UnsupportedQuery("COUNT(DISTINCT ...) is supported only on the privacy unit "
                                   f"column '{scope.meta.privacy_unit}'")
        column = _plain_column(arg, name, scope)
        return AggregateUse(node, "count_col", column)
    if isinstance(node, (exp.Sum, exp.Avg) + _VARIANCE + _STDDEV):
        if isinstance(arg, exp.Distinct):
            raise UnsupportedQuery(f"{name}(DISTINCT ...) is not supported")
        column = _plain_column(arg, name, scope)
        meta = scope.meta.column(column)
        if column == scope.meta.privacy_unit:
            raise PolicyRefused(f"{name}() over the privacy unit column '{column}' is not allowed")
        if not meta.is_numeric:
            raise UnsupportedQuery(f"{name}() needs a numeric column; '{column}' is {meta.type}")
        if not meta.has_bounds:
            raise PolicyRefused(f"column '{column}' has no declared bounds, so {name}() cannot be "
                                "computed with differential privacy; the data owner must declare "
                                "lower and upper bounds in the dataset metadata")
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
                           "VARIANCE/VAR_SAMP/VAR_POP, STDDEV/STDDEV_SAMP/STDDEV_POP")


def _plain_column(arg: exp.Expression | None, name: str, scope: TableScope) -> str:
    if isinstance(arg, exp.Paren):
        arg = arg.this
    if not isinstance(arg, exp.Column):
        raise UnsupportedQuery(f"the argument of {name}() must be a single column with declared "
                               "bounds; expressions inside aggregates are not supported yet")
    return scope.resolve(arg)

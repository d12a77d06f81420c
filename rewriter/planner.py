"""Turn one analyst SELECT into a DPPlan (pure: sqlglot trees and metadata in, plan out).

Shape of the bounded SQL (privacy rule 1, bounds from metadata only):

    src       the rows of the FROM clause (tables joined on the unit) passing WHERE (made
              total), values clamped to the declared bounds as fixed-point integers
    per_unit  GROUP BY unit, keys: each unit's contribution to each group, capped at
              max_rows_per_group rows' worth (the Linf bound)
    bounded   at most max_groups_per_unit groups per unit, chosen by a hash of the keys
              (deterministic, depends on the unit's own rows only: the L0 bound)
    result    GROUP BY keys: one integer sum per measure and group

When a table holds at most k rows per unit (truncated by its owner at ingest,
`truncate_rows_per_unit`, or when read, `max_rows_per_unit`: rewriter/truncation.py) and k
gives no larger a sensitivity than the per-unit bounds, the per-unit stages are skipped (the
"direct path"): a unit then moves the result by at most k rows, so plain clamped GROUP BY
sums already have bounded sensitivity. The query-time truncation happens when the table is
read, before joins and WHERE, exactly as if it had been truncated at ingest.

Quantiles (MIN/MAX/MEDIAN/PERCENTILE_CONT) need the values themselves: a second query
returns each group's clamped values, at most max_rows_per_group per unit and group and
max_groups_per_unit groups per unit; OpenDP scores candidates over the declared bounds.
"""
from __future__ import annotations

import itertools
import math
from fractions import Fraction
from dataclasses import dataclass, replace

from sqlglot import exp

from rewriter.aggregates import AggregateUse, BaseMeasure, classify_aggregate, is_aggregate
from rewriter.flatten import flatten
from rewriter.plan import DPPlan, KeyRelease, Measure, OutputColumnSpec, QuantileMeasure, Sensitivity
from rewriter.rowexpr import (ALLOWED_ROW_NODES, _cannot_fail, _describe, check_row_expression,
                              conjuncts, total_condition)
from rewriter.scope import QueryScope, TableResolver, build_scope
from sqlgate.errors import PolicyRefused, UnsupportedQuery
from sqlgate.metadata import ColumnMeta, StoredSum, stored_sum_column

NOISY_TABLE = "noisy"
UNIT = "__unit"
# Fixed-point values per row stay below 2**31 so that sums of billions of rows fit in i64.
_MAX_ROW_MAGNITUDE_BITS = 31
_MAX_FRACTION_BITS = 16
# The most one unit may move one cell of a measure, in integer units. Every per-row value
# and per-unit contribution is then an exact integer in both BIGINT and DOUBLE (the per-unit
# stage multiplies a DOUBLE mean), so no cast can fail on a value (an engine error that
# depends on the data is an oracle) and the bound holds exactly. Wider bounds are refused.
_MAX_CONTRIBUTION = 2**53
# Whole-vector norms stay far inside OpenDP's i64 distances.
_MAX_L1 = 2**62
QUANTILE_CANDIDATES = 1024


@dataclass(frozen=True)
class _Key:
    output: str  # name in the bounded result and the noisy table
    expr: exp.Expression  # row-level expression over qualified refs
    ref: str | None  # the column, when the key is a plain column
    type: str
    public_keys: tuple | None


def plan_select(select: exp.Select, resolve_table: TableResolver, *, canonical_sql: str) -> DPPlan:
    _refuse_unsupported_clauses(select)
    select = flatten(select, resolve_table)
    _refuse_unsupported_clauses(select)
    scope = build_scope(select, resolve_table)
    keys = _group_keys(select, scope)
    uses = _aggregate_uses(select, scope)
    if not uses:
        raise PolicyRefused("the query has no aggregate: raw rows cannot be released; use "
                            "COUNT, SUM, AVG, VARIANCE, STDDEV or a quantile (or request exact "
                            "access from the data owner)")
    where = None
    if select.args.get("where") is not None:
        where = check_row_expression(select.args["where"].this, scope, "WHERE")

    dataset = scope.dataset
    key_release = _key_release(dataset, keys)
    direct = _use_direct_path(scope, key_release)
    measures, quantiles = _measures(uses, keys, key_release, scope, direct)
    if key_release.mode == "threshold":
        key_release = KeyRelease("threshold", key_release.key_names, key_release.key_types,
                                 threshold_measure=_count_measure_name(measures))
    bounded = _bounded_sql(scope, keys, measures, where, key_release, direct) if measures else None
    quantile_sql = _quantile_sql(scope, keys, quantiles, where, key_release, direct) if quantiles else None
    outputs, post = _postprocess(select, scope, keys, measures, quantiles, direct)
    return DPPlan(
        dataset=dataset.name, table=scope.description, canonical_sql=canonical_sql,
        bounded=bounded, bounded_sql=bounded.sql(dialect="duckdb") if bounded else "", keys=key_release,
        measures=measures, outputs=outputs, postprocess=post, direct_path=direct,
        quantiles=quantiles, quantile_sql=quantile_sql.sql(dialect="duckdb") if quantile_sql else None,
        notes=_bound_notes(scope, direct),
    )


# ---------------------------------------------------------------- validation


def _refuse_unsupported_clauses(select: exp.Select) -> None:
    if select.args.get("distinct") is not None:
        raise PolicyRefused("SELECT DISTINCT releases raw values; use GROUP BY with an "
                            "aggregate such as COUNT(*) instead")
    for clause in ("qualify", "laterals", "pivots", "windows", "connect", "prewhere",
                   "into", "locks", "sample", "settings", "format"):
        if select.args.get(clause):
            raise UnsupportedQuery(f"{clause.upper()} is not supported")
    for node in select.walk():
        if isinstance(node, exp.Window):
            raise PolicyRefused("window functions are not allowed: they expose individual rows")
        if isinstance(node, (exp.Placeholder, exp.Parameter)):
            raise UnsupportedQuery("unbound query parameter; bind all parameters before running")
        if isinstance(node, (exp.Union, exp.Intersect, exp.Except)):
            raise UnsupportedQuery("set operations (UNION/INTERSECT/EXCEPT) are not supported: "
                                   "they can combine a unit's rows beyond its contribution bound")
        if isinstance(node, exp.TableSample):
            raise UnsupportedQuery("TABLESAMPLE is not supported: DP answers are computed over "
                                   "every row within the contribution bounds")
        if isinstance(node, exp.Lateral) or isinstance(node, exp.Unnest):
            raise UnsupportedQuery("LATERAL and UNNEST are not supported")
        if isinstance(node, exp.Table) and not isinstance(node.this, exp.Identifier):
            raise PolicyRefused("only dataset tables can be queried: table functions, files and "
                                "other sources are not allowed")
    for item in select.expressions:
        if isinstance(item, exp.Star) or (isinstance(item, exp.Column) and isinstance(item.this, exp.Star)):
            raise PolicyRefused("SELECT * would release raw rows; select aggregates such as "
                                "COUNT(*) or AVG(column) instead")


def _group_keys(select: exp.Select, scope: QueryScope) -> tuple[_Key, ...]:
    group = select.args.get("group")
    if group is None:
        return ()
    if group.args.get("rollup") or group.args.get("cube") or group.args.get("grouping_sets"):
        raise UnsupportedQuery("ROLLUP, CUBE and GROUPING SETS are not supported")
    aliases = {item.alias.lower(): item.this for item in select.expressions
               if isinstance(item, exp.Alias)}
    keys: list[_Key] = []
    for item in group.expressions:
        if isinstance(item, (exp.Rollup, exp.Cube, exp.GroupingSets)):
            raise UnsupportedQuery("ROLLUP, CUBE and GROUPING SETS are not supported")
        target = item.this if isinstance(item, exp.Paren) else item
        if isinstance(target, exp.Literal) and not target.is_string:
            position = int(float(target.this))
            if not 1 <= position <= len(select.expressions):
                raise UnsupportedQuery(f"GROUP BY position {position} is not in the select list")
            chosen = select.expressions[position - 1]
            target = chosen.this if isinstance(chosen, exp.Alias) else chosen
        elif (isinstance(target, exp.Column) and not target.table
              and target.name.lower() in aliases and not _is_table_column(target, scope)):
            target = aliases[target.name.lower()]
        key = _key_from_expression(target, scope, f"k{len(keys)}")
        if any(k.expr == key.expr for k in keys):
            continue
        keys.append(key)
    return tuple(keys)


def _is_table_column(column: exp.Column, scope: QueryScope) -> bool:
    return any(src.table.column(column.name) is not None for src in scope.sources.values())


def _key_from_expression(target: exp.Expression, scope: QueryScope, output: str) -> _Key:
    if isinstance(target, exp.Column):
        ref = scope.resolve(target)
        if scope.is_unit(ref) or ref == scope.unit_ref:
            raise PolicyRefused(f"grouping by the privacy unit '{target.name}' would release "
                                "per-unit values")
        meta = scope.meta(ref)
        return _Key(output, scope.expr(ref), ref, meta.type, meta.public_keys)
    if isinstance(target, exp.Case):
        return _case_key(target, scope, output)
    if isinstance(target, exp.Anonymous) and target.name.lower() == "width_bucket":
        return _width_bucket_key(target, scope, output)
    if isinstance(target, exp.WidthBucket):
        return _width_bucket_key(target, scope, output)
    raise UnsupportedQuery("GROUP BY supports columns, CASE expressions with literal results "
                           "(bins) and width_bucket(column, low, high, count)")


def _case_key(case: exp.Case, scope: QueryScope, output: str) -> _Key:
    """CASE bins: the possible keys are the literal results, known without the data."""
    results = [branch.args.get("true") for branch in case.args.get("ifs") or []]
    default = case.args.get("default")
    results.append(default if default is not None else exp.Null())
    values = []
    for result in results:
        if isinstance(result, exp.Null):
            value = None
        elif isinstance(result, exp.Literal) and result.is_string:
            value = result.this
        elif _signed_number(result) is not None:
            value = _signed_number(result)
        else:
            raise UnsupportedQuery("a CASE used in GROUP BY must have literal results (the bins "
                                   "must be known without looking at the data)")
        if value not in values:
            values.append(value)
    kinds = {type(v) for v in values if v is not None}
    if len(kinds) > 1 and kinds != {int, float}:
        raise UnsupportedQuery("the results of a CASE bin must all be strings or all numbers")
    type_name = "string" if str in kinds else ("float" if float in kinds else "int")
    checked = check_row_expression(case, scope, "GROUP BY")
    # Bins whose conditions are all comparisons that cannot fail (as total_condition judges
    # WHERE conjuncts) need no TRY(), which cost DuckDB ~10 ns a row (1.5 ms of TPC-H q07's 3.3).
    if not all(_cannot_fail(part, scope) for branch in checked.args.get("ifs") or []
               for part in conjuncts(branch.this)):
        checked = exp.Anonymous(this="TRY", expressions=[checked])
    if type_name == "float":
        # Decimal literals are DECIMALs in DuckDB, returned as Decimal('0.1'), which is not
        # the public key 0.1: the release found no group for such a bin (noisy zeros).
        checked = exp.Cast(this=checked, to=exp.DataType.build("DOUBLE"))
    return _Key(output, checked, None, type_name, tuple(values))


def _width_bucket_key(node: exp.Expression, scope: QueryScope, output: str) -> _Key:
    args = list(node.expressions) if isinstance(node, exp.Anonymous) else [
        node.this, node.args.get("min_value"), node.args.get("max_value"), node.args.get("num_buckets")]
    numbers = [_signed_number(a) for a in args[1:]]
    if len(args) != 4 or not isinstance(args[0], exp.Column) or None in numbers:
        raise UnsupportedQuery("width_bucket needs (column, low, high, count) with number literals")
    ref = scope.resolve(args[0])
    meta = scope.meta(ref)
    if not meta.is_numeric:
        raise UnsupportedQuery("width_bucket needs a numeric column")
    low, high, count = numbers[0], numbers[1], numbers[2]
    # high - low must be a finite double too: it is the divisor written into the SQL.
    if not (high > low and math.isfinite(high - low) and float(count).is_integer()
            and 1 <= count <= 10_000):
        raise UnsupportedQuery("width_bucket needs finite low < high and 1 to 10000 buckets")
    count = int(count)
    value = exp.Cast(this=scope.expr(ref), to=exp.DataType.build("DOUBLE"))
    shifted = exp.Paren(this=exp.Sub(this=value, expression=_num(low)))
    position = exp.Mul(this=exp.Paren(this=exp.Div(this=shifted, expression=_num(high - low))),
                       expression=exp.Literal.number(count))
    bucket = exp.Add(this=exp.func("FLOOR", position), expression=exp.Literal.number(1))
    # PostgreSQL semantics: 0 below low, count+1 at or above high.
    clamped = exp.func("LEAST", exp.func("GREATEST", bucket, exp.Literal.number(0)),
                       exp.Literal.number(count + 1))
    # TRY: a NaN value would make the cast fail, and a failure must not depend on data.
    expr = exp.Anonymous(this="TRY", expressions=[exp.Cast(this=clamped, to=exp.DataType.build("BIGINT"))])
    return _Key(output, expr, None, "int", tuple(range(0, count + 2)))


def _signed_number(node: exp.Expression):
    """The value of a number literal, also negated (`-10` parses as Neg(10)); else None."""
    sign = 1
    if isinstance(node, exp.Neg):
        sign, node = -1, node.this
    if not (isinstance(node, exp.Literal) and not node.is_string):
        return None
    value = _number(node.this)
    return -value if sign < 0 else value


def _number(text: str):
    value = float(text)
    return int(value) if value.is_integer() and "." not in str(text) and "e" not in str(text).lower() else value


def _aggregate_uses(select: exp.Select, scope: QueryScope) -> list[AggregateUse]:
    uses: list[AggregateUse] = []
    containers = list(select.expressions)
    for clause in ("having", "order"):
        if select.args.get(clause) is not None:
            containers.append(select.args[clause])
    for container in containers:
        for node in container.walk():
            if not is_aggregate(node):
                continue
            if any(is_aggregate(a) for a in _ancestors(node)):
                continue
            inner = [n for n in node.walk() if n is not node and is_aggregate(n)
                     and not isinstance(node, exp.WithinGroup)]
            if inner:
                raise UnsupportedQuery("nested aggregates are not supported")
            uses.append(classify_aggregate(node, scope))
    return uses


def _ancestors(node: exp.Expression):
    parent = node.parent
    while parent is not None:
        yield parent
        parent = parent.parent


def _key_release(dataset, keys: tuple[_Key, ...]) -> KeyRelease:
    if not keys:
        return KeyRelease("none")
    names = tuple(k.output for k in keys)
    types = tuple(k.type for k in keys)
    if all(k.public_keys is not None for k in keys):
        cells = math.prod(len(k.public_keys) for k in keys)
        if cells > dataset.max_public_cells:
            raise PolicyRefused(f"the public key sets of the GROUP BY columns make {cells} "
                                f"cells, more than the dataset's limit of "
                                f"{dataset.max_public_cells}")
        product = tuple(itertools.product(*(k.public_keys for k in keys)))
        return KeyRelease("public", names, types, public_cells=product)
    return KeyRelease("threshold", names, types)


def _use_direct_path(scope: QueryScope, keys: KeyRelease) -> bool:
    """Plan on the rows-per-unit bound k (the direct path) or on L0 x Linf (the per-unit
    stages), whichever gives the smaller sensitivity of a row count, from metadata only.

    Direct: a unit's k rows move the vector by at most k in L1 and in L2 (all in one group).
    Per-unit: it touches min(L0, public cells) groups (1 without GROUP BY), each by at most
    Linf rows: L1 = groups * Linf, L2 = sqrt(groups) * Linf. The norm is the one the
    dataset's mechanism calibrates on (Laplace: L1, Gaussian: L2). Ties go to the direct
    path: same noise, and it drops no rows beyond the k a unit keeps, where Linf drops every
    row over Linf in a group (a bias the metadata cannot tell).
    """
    k = scope.truncate_rows_per_unit
    if k is None:
        return False
    if keys.mode == "none":
        groups = 1
    elif keys.mode == "public":
        groups = min(scope.max_groups_per_unit, len(keys.public_cells))
    else:
        groups = scope.max_groups_per_unit
    linf = scope.max_rows_per_group
    per_unit = math.sqrt(groups) * linf if scope.dataset.mechanism == "gaussian" else groups * linf
    return k <= per_unit


def _bound_notes(scope: QueryScope, direct: bool) -> tuple[str, ...]:
    """How contributions were bounded, for explain (public metadata only)."""
    read = [f"{s.table.max_rows_per_unit} rows of {s.table.name}" for s in scope.truncated_at_query_time]
    truncated = (f"each unit contributes at most {', '.join(read)} to this query (truncated "
                 "per unit when read, chosen by a hash of the row)") if read else None
    if direct:
        how = ("contributions were bounded at query time (truncated rows per unit when read; "
               "direct path)" if read else
               "contributions were bounded at ingest (truncated rows per unit)")
        return tuple(n for n in (how, truncated, _rows_per_unit_note(scope)) if n)
    if read:
        return (truncated, f"then bounded per unit: at most {scope.max_groups_per_unit} groups "
                           f"x {scope.max_rows_per_group} rows per group")
    return ()


def _rows_per_unit_note(scope: QueryScope) -> str | None:
    """Which sources the direct path's rows-per-unit bound multiplies (metadata only)."""
    if len(scope.sources) == 1:
        return None
    bounding = scope.bounding_sources() or []
    parts = []
    for alias in bounding:
        table = scope.sources[alias].table
        through = f" through {table.unit_via.table}" if table.unit_via else ""
        parts.append(f"{table.name}: {table.rows_per_unit}{through}")
    text = (f"rows per unit after the joins: at most {scope.truncate_rows_per_unit} "
            f"({' x '.join(parts)})")
    for s in scope.private_sources:
        if s.alias not in bounding:
            text += (f"; {s.table.name} is joined on its enforced key, one row per row "
                     "referencing it")
    return text


# ---------------------------------------------------------------- measures


def _measures(uses, keys, key_release, scope: QueryScope, direct: bool):
    needed: list[BaseMeasure] = []
    for use in uses:
        for base in use.needs:
            base = _canonical_measure(base, scope, direct)
            if base not in needed:
                needed.append(base)
    sums = [b for b in needed if b.kind != "quantile"]
    if key_release.mode == "threshold" and not _has_threshold_measure(sums, scope, direct):
        # Keys found in the data are released only through a thresholded count of units.
        sums.insert(0, BaseMeasure("units"))
    cells = len(key_release.public_cells) if key_release.mode == "public" else None
    measures = []
    for index, base in enumerate(sums):
        bits, row_bound, lower, upper = _row_bound(base, scope)
        sens = _sensitivity(base, row_bound, scope, keys, direct, cells)
        _check_representable(base, sens, scope)
        measures.append(Measure(name=f"m{index}", kind=base.kind, column=base.column,
                                fixed_point_bits=bits, sensitivity=sens, lower=lower, upper=upper))
    quantiles = []
    for index, base in enumerate(b for b in needed if b.kind == "quantile"):
        meta = scope.meta(base.column)
        l0 = _groups_per_unit(scope, keys, direct, cells)
        rows = scope.truncate_rows_per_unit if direct else scope.max_rows_per_group
        quantiles.append(QuantileMeasure(
            name=f"q{index}", column=base.column, alpha=base.alpha, lower=float(meta.lower),
            upper=float(meta.upper), candidates=_candidates(meta), groups_per_unit=l0,
            rows_per_unit=rows))
    return tuple(measures), tuple(quantiles)


def _candidates(meta: ColumnMeta) -> tuple[float, ...]:
    """Strictly increasing candidates in [lower, upper] (OpenDP's scorer refuses repeats):
    the integers of a narrow int column, else an even grid, which collapses to fewer points
    when the bounds are equal or a few floats apart."""
    lower, upper = float(meta.lower), float(meta.upper)
    if meta.type == "int" and upper - lower + 1 <= QUANTILE_CANDIDATES:
        integers = tuple(float(v) for v in range(math.ceil(lower), math.floor(upper) + 1))
        if integers:  # int bounds such as [0.2, 0.8] hold no integer: use the grid
            return integers
    # Divided first: upper - lower overflows to inf for bounds near +-1.8e308.
    step = upper / (QUANTILE_CANDIDATES - 1) - lower / (QUANTILE_CANDIDATES - 1)
    grid = {min(upper, max(lower, lower + i * step)) for i in range(QUANTILE_CANDIDATES)}
    return tuple(sorted(grid))


def _canonical_measure(base: BaseMeasure, scope: QueryScope, direct: bool) -> BaseMeasure:
    """Share one noisy count between aggregates that are provably the same count: fewer
    measures means more budget (less noise) for each."""
    if base.kind == "count_col" and not scope.meta(base.column).nullable and not _outer_side(scope, base.column):
        return BaseMeasure("count")
    if base.kind == "units" and not direct and scope.max_rows_per_group == 1:
        return BaseMeasure("count")  # each unit adds min(rows, 1) = 1 to a group it is in
    return base


def _outer_side(scope: QueryScope, ref: str) -> bool:
    alias = ref.split(".", 1)[0]
    return any(kind == "LEFT" and joined == alias for kind, joined, _ in scope.joins)


def fraction_bits(meta: ColumnMeta, magnitude: float) -> int:
    """Fixed-point precision for a column: exact for ints, as fine as i64 sums allow else."""
    if meta.type == "int" and float(meta.lower).is_integer() and float(meta.upper).is_integer():
        return 0
    if magnitude <= 0:
        return _MAX_FRACTION_BITS
    bits = _MAX_ROW_MAGNITUDE_BITS - math.ceil(math.log2(magnitude + 1))
    return max(0, min(_MAX_FRACTION_BITS, bits))


def _row_bound(base: BaseMeasure, scope: QueryScope):
    """(fraction bits, max |integer contribution| of one row, lower, upper) for a measure."""
    if base.kind in ("count", "count_col", "units"):
        return 0, 1, None, None
    meta = scope.meta(base.column)
    if base.kind == "sum":
        encoding = sum_encoding(meta)
        return encoding.bits, sum_row_bound(encoding), encoding.lower, encoding.upper
    lower, upper = float(meta.lower), float(meta.upper)
    # The engine squares fl(v - centre) for v clamped to [lower, upper], in DOUBLE. That is
    # not (upper - lower) / 2 squared: fl(upper - centre) can exceed fl((upper - lower) / 2)
    # (bounds [7688.759138726386, 75060685.4375]: the square rounded one unit past such a
    # bound). Rounding is monotone, so the engine's largest square is the larger of the
    # two ends' squares, computed with the same float operations.
    centre = _centre(lower, upper)
    reach = max(abs(upper - centre), abs(lower - centre))
    square_max = reach * reach
    if not math.isfinite(square_max):
        raise PolicyRefused(f"the declared bounds of column '{meta.name}' [{meta.lower}, "
                            f"{meta.upper}] are too wide for a variance or standard deviation; "
                            "the data owner must declare tighter bounds")
    if meta.type == "int" and lower.is_integer() and upper.is_integer() and (lower + upper) % 2 == 0:
        bits = 0  # integer values around an integer centre: squares are exact integers
    else:
        bits = fraction_bits(ColumnMeta(meta.name, "float", 0.0, square_max), square_max)
    return bits, _engine_round(square_max * (1 << bits)), lower, upper


def sum_encoding(meta: ColumnMeta) -> StoredSum:
    """How a sum measure over a bounded column encodes each row (bounds, fraction bits, NULL
    handling): one definition for planning and for the catalog's stored column."""
    lower, upper = float(meta.lower), float(meta.upper)
    return StoredSum(lower, upper, fraction_bits(meta, max(abs(lower), abs(upper))),
                     meta.nullable)


def sum_row_bound(encoding: StoredSum) -> int:
    """max |integer| one row adds to a sum measure with this encoding (as the engine rounds)."""
    scale = 1 << encoding.bits
    return max(_engine_round(abs(encoding.lower * scale)),
               _engine_round(abs(encoding.upper * scale)))


def fixed_point_sum(value: exp.Expression, encoding: StoredSum) -> exp.Expression:
    """Per row, the integer a sum measure adds: the value clamped to the bounds, scaled and
    rounded (NULL stays NULL when nullable). The bounded SQL and the DuckDB catalog's stored
    column (sqlgate/catalog.py) are both this expression, so they are equal on every row."""
    return _clamped_fixed_point(value, encoding.lower, encoding.upper, encoding.bits,
                                nullable=encoding.nullable)


def storable_sum_encoding(meta: ColumnMeta) -> StoredSum | None:
    """The encoding the catalog may precompute for a column: a bounded numeric column whose
    row values fit the planner's limit (wider ones are refused at planning, and their cast
    to BIGINT could fail on data at load). None: nothing to store."""
    if not (meta.is_numeric and meta.has_bounds):
        return None
    encoding = sum_encoding(meta)
    return encoding if sum_row_bound(encoding) <= _MAX_CONTRIBUTION else None


def _centre(lower: float, upper: float) -> float:
    """The centre the bounded SQL subtracts before squaring (one definition for the SQL and
    the row bound, which must see the very same float)."""
    return (lower + upper) / 2


def _engine_round(magnitude: float) -> int:
    """|ROUND(v)| for |v| = magnitude as the engines compute it: halves away from zero (DuckDB,
    Spark, and the PostgreSQL translation), where Python's round() goes to even. A bound
    computed with round() was one short at an exact half (e.g. upper 600000.000244140625
    scaled by 2048; or 2^-17 by 2^16, a bound of 0 and thus no noise at all). Exact: the
    scaled value is a float, so Fraction holds it exactly."""
    return math.floor(Fraction(magnitude) + Fraction(1, 2))


def _check_representable(base: BaseMeasure, sens: Sensitivity, scope: QueryScope) -> None:
    """Refuse a measure one unit could move by more than _MAX_CONTRIBUTION in a cell (or
    _MAX_L1 in all): e.g. VARIANCE over bounds [0, 1e10], whose squares (2.5e19) do not fit
    in BIGINT, made the engine fail on exactly the rows far from the centre. Decided from
    metadata only, before anything runs."""
    if sens.linf <= _MAX_CONTRIBUTION and sens.l1 <= _MAX_L1:
        return
    if base.column is None:
        raise PolicyRefused("the contribution bounds of this dataset (max_groups_per_unit, "
                            "max_rows_per_group, truncate_rows_per_unit) are too large to "
                            "count with differential privacy")
    meta = scope.meta(base.column)
    what = {"sum": "a sum", "sum_sq": "a variance or standard deviation"}[base.kind]
    raise PolicyRefused(f"the declared bounds of column '{meta.name}' [{meta.lower}, "
                        f"{meta.upper}] are too wide for {what}: one person could move it "
                        f"by more than 2^53 fixed-point units; the data owner must declare "
                        "tighter bounds (or smaller contribution bounds)")


def _groups_per_unit(scope: QueryScope, keys, direct: bool, cells: int | None) -> int:
    if not keys:
        return 1
    l0 = scope.truncate_rows_per_unit if direct else scope.max_groups_per_unit
    return min(l0, cells) if cells else l0


def _sensitivity(base: BaseMeasure, row_bound: int, scope: QueryScope, keys, direct: bool,
                 cells: int | None) -> Sensitivity:
    l0 = _groups_per_unit(scope, keys, direct, cells)
    if direct:
        k = scope.truncate_rows_per_unit
        if base.kind == "units":
            return Sensitivity(l0=l0, linf=1, l1=l0, l2=math.sqrt(l0))
        linf = k * row_bound
        return Sensitivity(l0=l0, linf=linf, l1=linf, l2=float(linf))
    per_group = 1 if base.kind == "units" else scope.max_rows_per_group * row_bound
    return Sensitivity(l0=l0, linf=per_group, l1=l0 * per_group, l2=math.sqrt(l0) * per_group)


def _has_threshold_measure(needed: list[BaseMeasure], scope: QueryScope, direct: bool) -> bool:
    """Can a measure the query needs anyway decide which keys are released, instead of an
    added count of units? A units count adds 1 per unit to a group (linf 1), the smallest
    threshold for a given noise scale, but one more measure splits the budget and, on the
    direct path, needs a per-unit stage in SQL.

    - A units count the query asks for: always.
    - Per-group bounding with one row per group: the row count is that units count.
    - Direct path, Laplace, a row count: its L1 sensitivity is k (a unit's k rows) and a
      units count's is min(k, groups) = k when keys are found in the data, so on its own the
      count gets scale k*n/eps where the two would get k*(n+1)/eps each. The threshold
      follows the scale (plus linf = k, small beside it): TPC-H q08, k = 40, eps 1,
      delta 1e-6: threshold 712 and noise scale 40, against 1346 and 80 with a units count.
      Gaussian noise calibrates on L2, where a units count (sqrt(k)) beats the row count
      (k), so it keeps the units count unless k = 1 (one row per unit: the two counts are
      the same count). All of this is metadata, never data."""
    if any(b.kind == "units" for b in needed):
        return True
    if not any(b.kind == "count" for b in needed):
        return False
    if not direct:
        return scope.max_rows_per_group == 1
    return scope.dataset.mechanism == "laplace" or scope.truncate_rows_per_unit == 1


def _count_measure_name(measures: tuple[Measure, ...]) -> str:
    """The count that decides which keys are released: units first (each unit adds 1 to a
    group), else the row count (`_has_threshold_measure` says when it may)."""
    for kind in ("units", "count"):
        for m in measures:
            if m.kind == kind:
                return m.name
    raise AssertionError("threshold release always plans a count")


# ---------------------------------------------------------------- bounded SQL


def _quoted(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def _col(name: str) -> exp.Column:
    return exp.Column(this=_quoted(name))


def _clamped(value: exp.Expression, lower: float, upper: float, *,
             keep_null: bool = False) -> exp.Expression:
    """CASE WHEN x >= lower THEN (CASE WHEN x <= upper THEN x ELSE upper END) ELSE lower END:
    the value of LEAST(GREATEST(x, lower), upper) for every x (NULL -> lower, NaN -> upper,
    +-inf, -0.0), about 0.4 ms faster per 150k rows in DuckDB. `keep_null`: NULL stays NULL
    (sums skip it, as SQL's SUM/AVG/VARIANCE do, and their counts are of non-NULL values; a
    NULL taken as `lower` made AVG of a nullable column wrong). A NULL adds 0 to a sum, within
    every row bound."""
    as_double = exp.Cast(this=value, to=exp.DataType.build("DOUBLE"))
    inner = exp.Case(ifs=[exp.If(this=exp.LTE(this=as_double.copy(), expression=_num(upper)),
                                 true=as_double.copy())], default=_num(upper))
    ifs = [exp.If(this=exp.GTE(this=as_double, expression=_num(lower)), true=inner)]
    if keep_null:
        ifs.append(exp.If(this=exp.Is(this=as_double.copy(), expression=exp.Null()),
                          true=exp.Null()))
    return exp.Case(ifs=ifs, default=_num(lower))


def _clamped_fixed_point(value: exp.Expression, lower: float, upper: float, bits: int,
                         center: float | None = None, nullable: bool = True) -> exp.Expression:
    clamped = _clamped(value, lower, upper, keep_null=nullable)
    if center is not None:
        shifted = exp.Sub(this=clamped, expression=_num(center))
        clamped = exp.Mul(this=exp.Paren(this=shifted), expression=exp.Paren(this=shifted.copy()))
    scaled = exp.Mul(this=exp.Paren(this=clamped), expression=exp.Literal.number(1 << bits))
    return exp.Cast(this=exp.func("ROUND", scaled), to=exp.DataType.build("BIGINT"))


def _num(value: float) -> exp.Expression:
    if float(value).is_integer():
        return exp.Literal.number(int(value))
    return exp.Literal.number(repr(float(value)))


def _src(scope: QueryScope, keys, extra_columns, where, key_release,
         filter_keys: bool = True) -> exp.Select:
    columns: list[exp.Expression] = [exp.alias_(scope.expr(scope.unit_ref), UNIT, quoted=True)]
    columns += [exp.alias_(k.expr.copy(), k.output, quoted=True) for k in keys]
    columns += extra_columns
    conditions = []
    if where is not None:
        conditions.append(total_condition(where, scope))
    if key_release.mode == "public" and filter_keys:
        for k in keys:
            conditions.append(_in_public_keys(k))
    src = scope.from_expression()
    src.set("expressions", columns)
    if conditions:
        src = src.where(exp.and_(*conditions))
    return src


def _in_public_keys(key: _Key, expr: exp.Expression | None = None) -> exp.Expression:
    """`expr` (default: the key's row expression) is one of the key's public values."""
    expr = key.expr if expr is None else expr
    values = [_literal(v) for v in key.public_keys if v is not None]
    condition = exp.In(this=expr.copy(), expressions=values) if values else exp.false()
    if None in key.public_keys:
        condition = exp.or_(condition, exp.Is(this=expr.copy(), expression=exp.Null()))
    return condition


def _filter_keys_early(scope: QueryScope, key_release: KeyRelease, direct: bool) -> bool:
    """Where public key sets are enforced in the bounded SQL.

    Early (on rows, in src) when a unit's groups are chosen by the L0 window: a group with
    a non-public key must not use up one of the unit's max_groups_per_unit slots. Otherwise
    not in SQL at all: the bounded result keeps every group, and the release reads exactly
    the public cells from it (sqlgate/gateway.py `_noisy_table`, server/router/protocol.py
    `partial_vector` look each public cell up; missing ones get noisy zeros, other groups
    are never read, so they are never released). Both release the same cells with the same
    sensitivity: a unit still touches at most min(L0, public cells) released cells, each by
    at most Linf. Measured (DuckDB, TPC-H SF 0.1): a per-row IN over strings cost as much as
    the aggregation; the late `HAVING k IN (...) OR COUNT(*) < 0` that replaced it still
    cost 0.1-0.5 ms a query (an extra filter and projection over the groups), and a filter
    over a MATERIALIZED CTE of the groups 1-2 ms; no filter costs nothing. (CASE and
    width_bucket keys cannot take other values anyway.)
    """
    return key_release.mode == "public" and not direct and _needs_l0_window(scope, key_release)


def _bounded_sql(scope: QueryScope, keys, measures, where, key_release, direct: bool) -> exp.Select:
    value_columns: dict[str, str] = {}
    extra: list[exp.Expression] = []
    for m in measures:
        if m.kind == "sum":
            alias = f"v_{m.name}"
            extra.append(exp.alias_(_sum_value(scope, m), alias, quoted=True))
            value_columns[m.name] = alias
        elif m.kind == "sum_sq":
            alias = f"v_{m.name}"
            extra.append(exp.alias_(
                _clamped_fixed_point(scope.expr(m.column), m.lower, m.upper, m.fixed_point_bits,
                                     _centre(m.lower, m.upper),
                                     nullable=scope.meta(m.column).nullable),
                alias, quoted=True))
            value_columns[m.name] = alias
        elif m.kind == "count_col":
            alias = f"v_{m.name}"
            extra.append(exp.alias_(scope.expr(m.column), alias, quoted=True))
            value_columns[m.name] = alias
    early = _filter_keys_early(scope, key_release, direct)
    src = _src(_reading_stored(scope, measures), keys, extra, where, key_release,
               filter_keys=early)
    key_cols = [_col(k.output) for k in keys]
    # Without an early filter, groups with keys outside the public set stay in the result
    # and are never read by the release (see _filter_keys_early).

    if direct and any(m.kind == "units" for m in measures):
        return _direct_two_level(src, key_cols, measures, value_columns)
    if direct:
        final_aggs = [exp.alias_(_direct_aggregate(m, value_columns), m.name, quoted=True)
                      for m in measures]
        result = exp.select(*key_cols, *final_aggs).from_("src")
        if keys:
            result = result.group_by(*[c.copy() for c in key_cols])
        return result.with_("src", as_=src)

    per_unit_aggs = [exp.alias_(_per_unit_contribution(m, value_columns, scope), f"c_{m.name}",
                                quoted=True) for m in measures]
    per_unit = exp.select(_col(UNIT), *key_cols, *per_unit_aggs).from_("src").group_by(
        _col(UNIT), *[c.copy() for c in key_cols])
    bounded_from = "per_unit"
    ctes = [("src", src), ("per_unit", per_unit)]
    if keys and _needs_l0_window(scope, key_release):
        ctes += _l0_bounded(scope, key_cols, [f"c_{m.name}" for m in measures])
        bounded_from = "bounded"
    final_aggs = [exp.alias_(exp.func("SUM", _col(f"c_{m.name}")), m.name, quoted=True)
                  for m in measures]
    result = exp.select(*[c.copy() for c in key_cols], *final_aggs).from_(bounded_from)
    if keys:
        result = result.group_by(*[c.copy() for c in key_cols])
    for name, cte in ctes:
        result = result.with_(name, as_=cte)
    return result


def _sum_encoding(scope: QueryScope, m: Measure) -> StoredSum:
    return StoredSum(m.lower, m.upper, m.fixed_point_bits, scope.meta(m.column).nullable)


def _reads_stored(scope: QueryScope, m: Measure) -> bool:
    """Whether sum measure `m` reads the column the DuckDB catalog stored for it at load
    (TableMeta.stored_sums): only when its recorded encoding is exactly the one planned now
    (not on other engines, catalogs saved before, changed metadata or rules). A source on
    the outer side of a LEFT JOIN never does: a padded row's NULL is not what the expression
    makes of it when the column is not nullable."""
    if m.kind != "sum":
        return False
    alias, name = m.column.split(".", 1)
    stored = scope.sources[alias].table.stored_sums.get(name)
    return stored == _sum_encoding(scope, m) and not _outer_side(scope, m.column)


def _sum_value(scope: QueryScope, m: Measure) -> exp.Expression:
    """A sum measure's per-row integer: the stored column where `_reads_stored`, else the
    expression. Both are `fixed_point_sum` of the row, so they are equal on every row; the
    stored column saves the per-row clamp and rounding (TPC-H SF 0.1 orders: 0.88 -> 0.36
    ms per sum)."""
    if _reads_stored(scope, m):
        alias, name = m.column.split(".", 1)
        # Named by the recorded encoding (== the planned one; -0.0 and 0.0 spell apart).
        column = stored_sum_column(name, scope.sources[alias].table.stored_sums[name])
        return exp.Column(this=_quoted(column), table=_quoted(alias))
    return fixed_point_sum(scope.expr(m.column), _sum_encoding(scope, m))


def _reading_stored(scope: QueryScope, measures) -> QueryScope:
    """`scope` with each table's stored sums narrowed to those `measures` read: a table
    read through a query-time truncation projects its stored columns, and carrying unused
    ones through it cost up to ~0.4 ms a query (TPC-H SF 0.1)."""
    used: dict[str, set[str]] = {}
    for m in measures:
        if _reads_stored(scope, m):
            alias, name = m.column.split(".", 1)
            used.setdefault(alias, set()).add(name)
    sources = {}
    for alias, source in scope.sources.items():
        kept = {c: s for c, s in source.table.stored_sums.items() if c in used.get(alias, ())}
        if kept != dict(source.table.stored_sums):
            source = replace(source, table=replace(source.table, stored_sums=kept))
        sources[alias] = source
    return replace(scope, sources=sources)


def _l0_bounded(scope: QueryScope, key_cols, contributions: list[str]):
    """CTEs `__groups` and `bounded`: at most max_groups_per_unit of each unit's groups.

    A unit keeps the groups with the smallest HASH(unit, keys), ties broken by the keys.
    Hashing the unit with the keys spreads the kept groups across units (a hash of the keys
    alone would keep the same groups for everyone); it depends only on the unit's own rows,
    and HASH is deterministic, never RANDOM(). Only units with more groups than the bound
    are ranked: the others keep all their groups, exactly what the ranking keeps for them.
    DuckDB turns a ranking over every unit into a top-n aggregate that cost 10 of TPC-H
    q17's 22 ms; split by a per-unit group count (the shape of rewriter/truncation.py) it
    costs 3-6 ms less."""
    limit = exp.Literal.number(scope.max_groups_per_unit)
    groups = exp.select(exp.alias_(_col(UNIT), "__gu", quoted=True),
                        exp.alias_(exp.Count(this=exp.Star()), "__g", quoted=True)) \
        .from_("per_unit").group_by(_col(UNIT))
    names = [UNIT, *[c.name for c in key_cols], *contributions]

    def sized(comparison) -> exp.Select:
        on = exp.EQ(this=exp.column(_quoted(UNIT), table=_quoted("per_unit")),
                    expression=exp.column(_quoted("__gu"), table=_quoted("__groups")))
        return exp.select(*[exp.column(_quoted(n), table=_quoted("per_unit")) for n in names]) \
            .from_("per_unit").join("__groups", on=on) \
            .where(comparison(this=_col("__g"), expression=limit.copy()))

    order = exp.Order(expressions=[
        exp.Ordered(this=exp.func("HASH", _col(UNIT), *[c.copy() for c in key_cols])),
        *[exp.Ordered(this=c.copy()) for c in key_cols]])
    rank = exp.Window(this=exp.RowNumber(), partition_by=[_col(UNIT)], order=order)
    heavy = exp.select(*[_col(n) for n in names]).from_(sized(exp.GT).subquery("__heavy")) \
        .qualify(exp.LTE(this=rank, expression=limit.copy()))
    return [("__groups", groups), ("bounded", exp.union(sized(exp.LTE), heavy, distinct=False))]


def _quantile_sql(scope: QueryScope, keys, quantiles, where, key_release, direct: bool) -> exp.Select:
    """Each group's clamped values, bounded per unit (rows per group, groups per unit)."""
    # NULLs of a nullable column stay NULL (the release skips them, as SQL's quantiles do).
    extra = [exp.alias_(_clamped(scope.expr(q.column), q.lower, q.upper,
                                 keep_null=scope.meta(q.column).nullable),
                        f"v_{q.name}", quoted=True)
             for q in quantiles]
    # Public keys are tested per row only where the L0 window needs it, as for the sums
    # (_filter_keys_early): the release reads the values of the public cells only, and a
    # per-row IN over TPC-H q19's 600k lineitem keys cost 10 of its 40 ms.
    early = _filter_keys_early(scope, key_release, direct)
    src = _src(_reading_stored(scope, ()), keys, extra, where, key_release, filter_keys=early)
    key_cols = [_col(k.output) for k in keys]
    values = [_col(f"v_{q.name}") for q in quantiles]
    if direct:
        return exp.select(*key_cols, *values).from_("src").with_("src", as_=src)
    if not (keys and _needs_l0_window(scope, key_release)):
        return _row_capped_values(scope, src, key_cols, values)
    row_order = exp.Order(expressions=[exp.Ordered(this=exp.func("HASH", *[v.copy() for v in values]))])
    row_rank = exp.Window(this=exp.RowNumber(), partition_by=[_col(UNIT), *[c.copy() for c in key_cols]],
                          order=row_order)
    ranked_columns = [*[c.copy() for c in key_cols], *[v.copy() for v in values],
                      exp.alias_(row_rank, "__row_rank", quoted=True)]
    conditions = [exp.LTE(this=_col("__row_rank"), expression=exp.Literal.number(scope.max_rows_per_group))]
    if keys and _needs_l0_window(scope, key_release):
        # Ties in the hash are broken by the keys themselves, so a unit never gets more groups.
        # (Skipped when the public key set has no more cells than a unit may touch: src keeps
        # public keys only, so no unit can exceed max_groups_per_unit groups anyway.)
        group_order = exp.Order(expressions=[exp.Ordered(this=exp.func("HASH", _col(UNIT), *[c.copy() for c in key_cols]))]
                                + [exp.Ordered(this=c.copy()) for c in key_cols])
        group_rank = exp.Window(this=exp.func("DENSE_RANK"), partition_by=[_col(UNIT)], order=group_order)
        ranked_columns.append(exp.alias_(group_rank, "__group_rank", quoted=True))
        conditions.append(exp.LTE(this=_col("__group_rank"),
                                  expression=exp.Literal.number(scope.max_groups_per_unit)))
    ranked = exp.select(*ranked_columns).from_("src")
    return (exp.select(*[c.copy() for c in key_cols], *[v.copy() for v in values])
            .from_("ranked").where(exp.and_(*conditions))
            .with_("src", as_=src).with_("ranked", as_=ranked))


def _row_capped_values(scope: QueryScope, src: exp.Select, key_cols, values) -> exp.Query:
    """At most max_rows_per_group values per (unit, group), ranked by value hash as below,
    but only in the pairs that have more rows than that: the same rows as ranking every row,
    and about 2x faster (TPC-H q19: 79 -> 36 ms), as the window over all rows was most of it.
    Pairs are matched with IS NOT DISTINCT FROM, so NULL keys and units keep their rows."""
    cap = exp.Literal.number(scope.max_rows_per_group)
    pair = [UNIT, *[c.name for c in key_cols]]
    counts = exp.select(*[_col(c) for c in pair],
                        exp.alias_(exp.Count(this=exp.Star()), "__n", quoted=True)) \
        .from_("src").group_by(*[_col(c) for c in pair])
    on = exp.and_(*[exp.NullSafeEQ(this=exp.column(_quoted(c), table=_quoted("src")),
                                   expression=exp.column(_quoted(c), table=_quoted("__counts")))
                    for c in pair])
    names = [*pair, *[v.name for v in values]]
    sized = exp.select(*[exp.column(_quoted(c), table=_quoted("src")) for c in names],
                       exp.column(_quoted("__n"), table=_quoted("__counts"))) \
        .from_("src").join("__counts", on=on)
    outputs = [*[c.copy() for c in key_cols], *[v.copy() for v in values]]
    light = exp.select(*[c.copy() for c in outputs]).from_("sized") \
        .where(exp.LTE(this=_col("__n"), expression=cap.copy()))
    rank = exp.Window(this=exp.RowNumber(), partition_by=[_col(c) for c in pair],
                      order=exp.Order(expressions=[exp.Ordered(
                          this=exp.func("HASH", *[v.copy() for v in values]))]))
    ranked = exp.select(*[c.copy() for c in outputs], exp.alias_(rank, "__row_rank", quoted=True)) \
        .from_("sized").where(exp.GT(this=_col("__n"), expression=cap.copy()))
    heavy = exp.select(*[c.copy() for c in outputs]).from_(ranked.subquery("ranked")) \
        .where(exp.LTE(this=_col("__row_rank"), expression=cap.copy()))
    return exp.union(light, heavy, distinct=False) \
        .with_("src", as_=src).with_("__counts", as_=counts).with_("sized", as_=sized)


def _needs_l0_window(scope: QueryScope, key_release: KeyRelease) -> bool:
    if key_release.mode == "public" and len(key_release.public_cells) <= scope.max_groups_per_unit:
        return False
    return True


def _per_unit_contribution(m: Measure, value_columns: dict[str, str], scope: QueryScope):
    cap = exp.Literal.number(scope.max_rows_per_group)
    if m.kind == "count":
        return exp.func("LEAST", exp.Count(this=exp.Star()), cap)
    if m.kind == "units":
        return exp.Literal.number(1)
    value = _col(value_columns[m.name])
    capped_rows = exp.func("LEAST", exp.Count(this=value.copy()), cap)
    if m.kind == "count_col":
        return capped_rows
    # The unit's mean value times its capped row count: consistent with the capped count, so
    # AVG stays unbiased for units within the bound, and always inside [cap*lower, cap*upper].
    mean = exp.func("COALESCE", exp.func("AVG", value), exp.Literal.number(0))
    # AVG is a DOUBLE: its rounding could put mean x rows a little past rows x the row
    # bound, so the product is also clamped to the planned per-group bound (an exact integer,
    # _check_representable), which no unit within the bounds reaches anyway.
    linf = exp.Literal.number(m.sensitivity.linf)
    product = exp.func("LEAST", exp.func("GREATEST", exp.Mul(this=mean, expression=capped_rows),
                                         exp.Neg(this=linf.copy())), linf)
    return exp.Cast(this=exp.func("ROUND", product), to=exp.DataType.build("BIGINT"))


def _direct_two_level(src: exp.Select, key_cols, measures, value_columns: dict[str, str]
                      ) -> exp.Select:
    """The direct path when a measure counts distinct units (threshold keys, COUNT(DISTINCT
    unit)): partial aggregates per (unit, keys), then one row per unit per group. Equal to
    COUNT(DISTINCT) and the plain aggregates (sums of integer partials are exact), and about
    twice as fast in DuckDB as a COUNT(DISTINCT) next to them."""
    partials: list[exp.Expression] = []
    finals: list[exp.Expression] = []
    for m in measures:
        if m.kind == "units":
            finals.append(exp.alias_(exp.Count(this=exp.Star()), m.name, quoted=True))
            continue
        partial = _direct_aggregate(m, value_columns)
        partials.append(exp.alias_(partial, f"p_{m.name}", quoted=True))
        finals.append(exp.alias_(exp.func("SUM", _col(f"p_{m.name}")), m.name, quoted=True))
    per_unit = exp.select(_col(UNIT), *[c.copy() for c in key_cols], *partials).from_("src") \
        .group_by(_col(UNIT), *[c.copy() for c in key_cols])
    result = exp.select(*[c.copy() for c in key_cols], *finals).from_("per_unit")
    if key_cols:
        result = result.group_by(*[c.copy() for c in key_cols])
    return result.with_("src", as_=src).with_("per_unit", as_=per_unit)


def _direct_aggregate(m: Measure, value_columns: dict[str, str]):
    if m.kind == "count":
        return exp.Count(this=exp.Star())
    if m.kind == "units":
        return exp.Count(this=exp.Distinct(expressions=[_col(UNIT)]))
    value = _col(value_columns[m.name])
    if m.kind == "count_col":
        return exp.Count(this=value)
    return exp.func("SUM", value)


def _literal(value) -> exp.Expression:
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, (int, float)):
        return exp.Literal.number(value)
    return exp.Literal.string(str(value))


# ---------------------------------------------------------------- post-processing


def _postprocess(select: exp.Select, scope: QueryScope, keys, measures, quantiles, direct: bool):
    by_base = _MeasureLookup(measures, quantiles, scope)
    outputs: list[OutputColumnSpec] = []
    projections = []
    aliases = {item.alias.lower() for item in select.expressions if isinstance(item, exp.Alias)}
    for item in select.expressions:
        alias = item.alias if isinstance(item, exp.Alias) else None
        body = item.this if isinstance(item, exp.Alias) else item
        rewritten, spec = _rewrite_output(body, scope, keys, by_base, aliases)
        name = alias or _default_name(body)
        projections.append(exp.alias_(rewritten, name, quoted=True))
        outputs.append(OutputColumnSpec(name=name, type=spec[0], noisy=spec[1], measure=spec[2],
                                        ratio_of=spec[3]))
    post = exp.select(*projections).from_(NOISY_TABLE)
    if select.args.get("having") is not None:
        having, _ = _rewrite_output(select.args["having"].this, scope, keys, by_base, aliases)
        post = post.where(having)
    if select.args.get("order") is not None:
        order = select.args["order"].copy()
        for ordered in order.expressions:
            target = ordered.this
            if isinstance(target, exp.Literal) or _is_output_alias(target, aliases, outputs):
                continue
            rewritten, _ = _rewrite_output(target, scope, keys, by_base, aliases)
            ordered.set("this", rewritten)
        post.set("order", order)
    for clause in ("limit", "offset"):
        node = select.args.get(clause)
        if node is not None:
            value = node.expression
            if not (isinstance(value, exp.Literal) and not value.is_string):
                raise UnsupportedQuery(f"{clause.upper()} must be a number")
            post.set(clause, node.copy())
    return tuple(outputs), post


def _is_output_alias(target, aliases, outputs) -> bool:
    if not isinstance(target, exp.Column) or target.table:
        return False
    name = target.name.lower()
    return name in aliases or any(o.name.lower() == name for o in outputs)


def _default_name(body: exp.Expression) -> str:
    if isinstance(body, exp.Column):
        return body.name.lower()
    if isinstance(body, exp.WithinGroup):
        return "percentile_cont"
    if isinstance(body, exp.Anonymous):
        return body.name.lower()
    if isinstance(body, exp.Func):
        return body.sql_name().lower()
    return "?column?"


def _rewrite_output(body: exp.Expression, scope: QueryScope, keys, by_base, aliases):
    """Rewrite an output expression over the noisy table; return (tree, (type, noisy,
    measure, ratio_of))."""
    key_by_expr = [(k.expr, k) for k in keys]

    def key_for(node: exp.Expression):
        if isinstance(node, exp.Column):
            try:
                probe = scope.expr(scope.resolve(node))
            except Exception:
                return None
        elif isinstance(node, (exp.Case, exp.Anonymous, exp.WidthBucket)):
            try:
                probe = _key_from_expression(node, scope, "probe").expr
            except Exception:
                return None
        else:
            return None
        for expr, key in key_by_expr:
            if expr == probe:
                return key
        return None

    def over_noisy(node: exp.Expression) -> exp.Expression:
        if _is_noisy_reference(node):
            return node
        if is_aggregate(node):
            return _aggregate_expression(classify_aggregate(node, scope), by_base, scope)[0]
        key = key_for(node)
        if key is not None:
            return _noisy_ref(key.output)
        if isinstance(node, exp.Column):
            if not node.table and node.name.lower() in aliases:
                return _noisy_ref(node.name, quoted_alias=True)
            scope.resolve(node)  # raises for unknown columns
            raise PolicyRefused(f"column '{node.name}' is neither aggregated nor a GROUP BY "
                                "key: raw values cannot be released")
        return node

    tree = body.transform(over_noisy)
    _check_output_nodes(body, key_for)
    if is_aggregate(body):
        info = _aggregate_expression(classify_aggregate(body, scope), by_base, scope)[1]
    elif key_for(body) is not None:
        info = (key_for(body).type, False, None, None)
    else:
        info = (None, any(is_aggregate(n) for n in body.walk()), None, None)
    return tree, info


# Post-processing runs after the release, on noisy values and public keys only, but in an
# engine of the server's: only arithmetic and simple total functions, so a result expression
# cannot allocate without bound (range, repeat, lists) or read the server's configuration.
_OUTPUT_FUNCTIONS = (exp.Sqrt, exp.Pow, exp.Ln, exp.Log, exp.Exp, exp.Ordered)
_OUTPUT_NODES = ALLOWED_ROW_NODES + _OUTPUT_FUNCTIONS


def _check_output_nodes(node: exp.Expression, key_for) -> None:
    """Refuse result expressions (SELECT list, HAVING, ORDER BY) outside the allow-list.
    Aggregates and GROUP BY key expressions are checked where they are planned."""
    if is_aggregate(node) or key_for(node) is not None:
        return
    if not isinstance(node, _OUTPUT_NODES):
        raise UnsupportedQuery(f"{_describe(node)} is not supported in result expressions: "
                               "only arithmetic, comparisons and simple functions such as "
                               "ROUND, ABS, COALESCE or CASE can be applied to aggregates")
    for child in node.iter_expressions():
        _check_output_nodes(child, key_for)


_NOISY_MARK = "__noisy_ref"


def _noisy_ref(name: str, quoted_alias: bool = True) -> exp.Column:
    column = exp.Column(this=exp.to_identifier(name, quoted=quoted_alias))
    column.meta[_NOISY_MARK] = True
    return column


def _is_noisy_reference(node: exp.Expression) -> bool:
    return isinstance(node, exp.Column) and bool(node.meta.get(_NOISY_MARK))


class _MeasureLookup:
    """Measures by (kind, column[, alpha]), following _canonical_measure's merges."""

    def __init__(self, measures, quantiles, scope: QueryScope):
        self._sums = {(m.kind, m.column): m for m in measures}
        self._quantiles = {(q.column, q.alpha): q for q in quantiles}
        self._scope = scope

    def __getitem__(self, key):
        if key in self._sums:
            return self._sums[key]
        merged = _canonical_measure(BaseMeasure(*key), self._scope, direct=False)
        return self._sums[(merged.kind, merged.column)]

    def quantile(self, column: str, alpha: float):
        return self._quantiles[(column, alpha)]


def _aggregate_expression(use: AggregateUse, by_base: _MeasureLookup, scope: QueryScope):
    """The post-processing expression for one aggregate over the noisy measures."""
    fn, col = use.function, use.column
    if fn == "quantile":
        q = by_base.quantile(col, use.alpha)
        return _noisy_ref(q.name), ("float", True, None, None)
    if fn in ("count", "units"):
        m = by_base[(fn, None)]
        return _noisy_ref(m.name), ("int", True, m.name, None)
    if fn == "count_col":
        m = by_base[("count_col", col)]
        return _noisy_ref(m.name), ("int", True, m.name, None)
    meta = scope.meta(col)
    s = by_base[("sum", col)]
    total = _scaled(s)
    if fn == "sum":
        kind = "int" if s.fixed_point_bits == 0 and meta.type == "int" else "float"
        return total, (kind, True, s.name, None)
    n = by_base[("count_col", col)]
    count = exp.func("GREATEST", _noisy_ref(n.name), exp.Literal.number(1))
    lower, upper = float(meta.lower), float(meta.upper)
    mean = exp.Div(this=exp.Cast(this=total, to=exp.DataType.build("DOUBLE")), expression=count)

    def clamp(e, lo, hi):
        return exp.func("LEAST", exp.func("GREATEST", e, _num(lo)), _num(hi))

    if fn == "avg":
        return clamp(mean, lower, upper), ("float", True, None, (s.name, n.name))
    sq = by_base[("sum_sq", col)]
    center = (lower + upper) / 2
    half_width = (upper - lower) / 2
    centred_mean = exp.Sub(this=clamp(mean, lower, upper), expression=_num(center))
    mean_square = exp.Div(this=exp.Cast(this=_scaled(sq), to=exp.DataType.build("DOUBLE")),
                          expression=count.copy())
    variance = exp.Sub(this=mean_square, expression=exp.Mul(
        this=exp.Paren(this=centred_mean), expression=exp.Paren(this=centred_mean.copy())))
    if fn in ("var_samp", "std_samp"):
        correction = exp.Div(
            this=exp.Cast(this=count.copy(), to=exp.DataType.build("DOUBLE")),
            expression=exp.func("GREATEST", exp.Sub(this=count.copy(), expression=exp.Literal.number(1)),
                                exp.Literal.number(1)))
        variance = exp.Mul(this=exp.Paren(this=variance), expression=correction)
    # Bounded values have population variance at most half_width**2; n/(n-1) at most doubles it.
    largest = half_width * half_width * (2 if fn in ("var_samp", "std_samp") else 1)
    variance = clamp(variance, 0.0, largest)
    if fn.startswith("std"):
        return exp.func("SQRT", variance), ("float", True, None, (s.name, n.name))
    return variance, ("float", True, None, (s.name, n.name))


def _scaled(m: Measure) -> exp.Expression:
    ref = _noisy_ref(m.name)
    if m.fixed_point_bits == 0:
        return ref
    return exp.Div(this=exp.Cast(this=ref, to=exp.DataType.build("DOUBLE")),
                   expression=exp.Literal.number(m.scale_factor))

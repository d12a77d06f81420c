"""Turn one analyst SELECT into a DPPlan (pure: sqlglot trees and metadata in, plan out).

Shape of the bounded SQL (privacy rule 1, bounds from metadata only):

    src       the table's rows passing WHERE (made total), values clamped to the declared
              bounds and turned into fixed-point integers
    per_unit  GROUP BY unit, keys: each unit's contribution to each group, capped at
              max_rows_per_group rows' worth (the Linf bound)
    bounded   at most max_groups_per_unit groups per unit, chosen by a hash of the keys
              (deterministic, depends on the unit's own rows only: the L0 bound)
    result    GROUP BY keys: one integer sum per measure and group

When the owner truncated the table to k rows per unit at ingest and k is no larger than
the per-unit bound, the per-unit stages are skipped (the "direct path"): a unit then moves a
group by at most k rows, so plain clamped GROUP BY sums already have bounded sensitivity.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable

from sqlglot import exp

from rewriter.aggregates import AggregateUse, BaseMeasure, classify_aggregate
from rewriter.plan import DPPlan, KeyRelease, Measure, OutputColumnSpec, Sensitivity
from rewriter.rowexpr import TableScope, check_row_expression, total_predicate
from sqlgate.errors import PolicyRefused, UnsupportedQuery
from sqlgate.metadata import ColumnMeta, DatasetMeta, TableMeta

TableResolver = Callable[[exp.Table], "tuple[DatasetMeta, TableMeta]"]

NOISY_TABLE = "noisy"
UNIT = "__unit"
# Fixed-point values per row stay below 2**31 so that sums of billions of rows fit in i64.
_MAX_ROW_MAGNITUDE_BITS = 31
_MAX_FRACTION_BITS = 16


@dataclass(frozen=True)
class _Key:
    output: str  # name in the bounded result and the noisy table
    column: str
    meta: ColumnMeta


def plan_select(select: exp.Select, resolve_table: TableResolver, *, canonical_sql: str) -> DPPlan:
    _refuse_unsupported_clauses(select)
    dataset, table = resolve_table(select.args["from_"].this)
    if table.public:
        raise UnsupportedQuery(f"table '{table.name}' is public; public tables can only be "
                               "joined with private ones (joins are not supported yet)")
    if table.unit_via is not None:
        raise UnsupportedQuery(f"table '{table.name}' reaches its privacy unit through "
                               f"{table.unit_via.table}; queries on it need a join, which is "
                               "not supported yet")
    scope = TableScope(table, _qualifiers(select.args["from_"].this, table))
    keys = _group_keys(select, scope)
    uses = _aggregate_uses(select, scope)
    if not uses:
        raise PolicyRefused("the query has no aggregate: raw rows cannot be released; use "
                            "COUNT, SUM, AVG, VARIANCE or STDDEV (or request exact access from "
                            "the data owner)")
    where = None
    if select.args.get("where") is not None:
        where = check_row_expression(select.args["where"].this, scope, "WHERE")

    key_release = _key_release(dataset, keys)
    direct = _use_direct_path(table, key_release)
    measures = _measures(uses, keys, key_release, table, direct, dataset)
    if key_release.mode == "threshold":
        key_release = KeyRelease("threshold", key_release.key_names, key_release.key_types,
                                 threshold_measure=_count_measure_name(measures))
    bounded = _bounded_sql(dataset, table, keys, measures, where, key_release, direct)
    outputs, post = _postprocess(select, scope, keys, uses, measures)
    return DPPlan(
        dataset=dataset.name, table=table.name, canonical_sql=canonical_sql,
        bounded=bounded, bounded_sql=bounded.sql(dialect="duckdb"), keys=key_release,
        measures=measures, outputs=outputs, postprocess=post, direct_path=direct,
    )


# ---------------------------------------------------------------- validation


def _refuse_unsupported_clauses(select: exp.Select) -> None:
    if select.args.get("with_") is not None or select.args.get("with") is not None:
        raise UnsupportedQuery("WITH (common table expressions) is not supported yet")
    if select.args.get("joins"):
        raise UnsupportedQuery("joins are not supported yet")
    if select.args.get("distinct") is not None:
        raise PolicyRefused("SELECT DISTINCT releases raw values; use GROUP BY with an "
                            "aggregate such as COUNT(*) instead")
    for clause in ("qualify", "laterals", "pivots", "windows", "connect", "prewhere",
                   "into", "locks", "sample", "settings", "format"):
        if select.args.get(clause):
            raise UnsupportedQuery(f"{clause.upper()} is not supported")
    from_ = select.args.get("from_")
    if from_ is None:
        raise UnsupportedQuery("the query must read a table (FROM ...)")
    source = from_.this
    if isinstance(source, exp.Subquery):
        raise UnsupportedQuery("subqueries in FROM are not supported yet")
    if not isinstance(source, exp.Table) or not isinstance(source.this, exp.Identifier):
        raise PolicyRefused("only dataset tables can be queried: table functions, files and "
                            "other sources are not allowed")
    for node in select.walk():
        if isinstance(node, exp.Window):
            raise PolicyRefused("window functions are not allowed: they expose individual rows")
        if isinstance(node, (exp.Subquery, exp.Exists)) or (
                isinstance(node, exp.Select) and node is not select):
            raise UnsupportedQuery("subqueries are not supported yet")
        if isinstance(node, (exp.Placeholder, exp.Parameter)):
            raise UnsupportedQuery("unbound query parameter; bind all parameters before running")
    for item in select.expressions:
        if isinstance(item, exp.Star) or (isinstance(item, exp.Column) and isinstance(item.this, exp.Star)):
            raise PolicyRefused("SELECT * would release raw rows; select aggregates such as "
                                "COUNT(*) or AVG(column) instead")


def _qualifiers(table_node: exp.Table, table: TableMeta) -> frozenset[str]:
    names = {table.name, table_node.name.lower()}
    if table_node.alias:
        names.add(table_node.alias.lower())
    return frozenset(names)


def _group_keys(select: exp.Select, scope: TableScope) -> tuple[_Key, ...]:
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
        target = item
        if isinstance(item, exp.Literal) and not item.is_string:
            position = int(item.this)
            if not 1 <= position <= len(select.expressions):
                raise UnsupportedQuery(f"GROUP BY position {position} is not in the select list")
            target = select.expressions[position - 1]
            target = target.this if isinstance(target, exp.Alias) else target
        elif isinstance(item, exp.Column) and not item.table and item.name.lower() in aliases \
                and scope.meta.column(item.name) is None:
            target = aliases[item.name.lower()]
        if isinstance(target, exp.Paren):
            target = target.this
        if not isinstance(target, exp.Column):
            raise UnsupportedQuery("GROUP BY supports plain columns only (bin values with a "
                                   "column declared by the data owner)")
        column = scope.resolve(target)
        if column == scope.meta.privacy_unit:
            raise PolicyRefused(f"grouping by the privacy unit '{column}' would release "
                                "per-unit values")
        if any(k.column == column for k in keys):
            continue
        keys.append(_Key(output=f"k{len(keys)}", column=column, meta=scope.meta.column(column)))
    return tuple(keys)


def _aggregate_uses(select: exp.Select, scope: TableScope) -> list[AggregateUse]:
    uses: list[AggregateUse] = []
    containers = list(select.expressions)
    for clause in ("having", "order"):
        if select.args.get(clause) is not None:
            containers.append(select.args[clause])
    for container in containers:
        for node in container.find_all(exp.AggFunc):
            if node.find_ancestor(exp.AggFunc) is not None:
                raise UnsupportedQuery("nested aggregates are not supported")
            if node.find(exp.Window) is not None:
                raise PolicyRefused("window functions are not allowed")
            uses.append(classify_aggregate(node, scope))
    return uses


def _key_release(dataset: DatasetMeta, keys: tuple[_Key, ...]) -> KeyRelease:
    if not keys:
        return KeyRelease("none")
    names = tuple(k.output for k in keys)
    types = tuple(k.meta.type for k in keys)
    if all(k.meta.public_keys is not None for k in keys):
        cells = math.prod(len(k.meta.public_keys) for k in keys)
        if cells > dataset.max_public_cells:
            raise PolicyRefused(f"the public key sets of the GROUP BY columns make {cells} "
                                f"cells, more than the dataset's limit of "
                                f"{dataset.max_public_cells}")
        product = tuple(itertools.product(*(k.meta.public_keys for k in keys)))
        return KeyRelease("public", names, types, public_cells=product)
    return KeyRelease("threshold", names, types)


def _use_direct_path(table: TableMeta, keys: KeyRelease) -> bool:
    k = table.truncate_rows_per_unit
    if k is None:
        return False
    if keys.mode == "none":
        return k <= table.max_rows_per_group
    return k <= table.max_groups_per_unit * table.max_rows_per_group


# ---------------------------------------------------------------- measures


def _measures(uses, keys, key_release, table: TableMeta, direct: bool,
              dataset: DatasetMeta) -> tuple[Measure, ...]:
    needed: list[BaseMeasure] = []
    for use in uses:
        for base in use.needs:
            base = _canonical_measure(base, table, direct)
            if base not in needed:
                needed.append(base)
    if key_release.mode == "threshold" and not _has_threshold_measure(needed, table, direct):
        # Keys found in the data are released only through a thresholded count of units.
        needed.insert(0, BaseMeasure("units"))
    cells = len(key_release.public_cells) if key_release.mode == "public" else None
    measures = []
    for index, base in enumerate(needed):
        bits, row_bound, lower, upper = _row_bound(base, table)
        sens = _sensitivity(base, row_bound, table, keys, direct, cells)
        measures.append(Measure(name=f"m{index}", kind=base.kind, column=base.column,
                                fixed_point_bits=bits, sensitivity=sens, lower=lower, upper=upper))
    return tuple(measures)


def _canonical_measure(base: BaseMeasure, table: TableMeta, direct: bool) -> BaseMeasure:
    """Share one noisy count between aggregates that are provably the same count: fewer
    measures means more budget (less noise) for each."""
    if base.kind == "count_col" and not table.column(base.column).nullable:
        return BaseMeasure("count")
    if base.kind == "units" and not direct and table.max_rows_per_group == 1:
        return BaseMeasure("count")  # each unit adds min(rows, 1) = 1 to a group it is in
    return base


def fraction_bits(meta: ColumnMeta, magnitude: float) -> int:
    """Fixed-point precision for a column: exact for ints, as fine as i64 sums allow else."""
    if meta.type == "int" and float(meta.lower).is_integer() and float(meta.upper).is_integer():
        return 0
    if magnitude <= 0:
        return _MAX_FRACTION_BITS
    bits = _MAX_ROW_MAGNITUDE_BITS - math.ceil(math.log2(magnitude + 1))
    return max(0, min(_MAX_FRACTION_BITS, bits))


def _row_bound(base: BaseMeasure, table: TableMeta):
    """(fraction bits, max |integer contribution| of one row, lower, upper) for a measure."""
    if base.kind in ("count", "count_col", "units"):
        return 0, 1, None, None
    meta = table.column(base.column)
    lower, upper = float(meta.lower), float(meta.upper)
    if base.kind == "sum":
        bits = fraction_bits(meta, max(abs(lower), abs(upper)))
        scale = 1 << bits
        bound = max(abs(round(lower * scale)), abs(round(upper * scale)))
        return bits, bound, lower, upper
    half_width = (upper - lower) / 2
    square_max = half_width * half_width
    if meta.type == "int" and lower.is_integer() and upper.is_integer() and (lower + upper) % 2 == 0:
        bits = 0  # integer values around an integer centre: squares are exact integers
    else:
        bits = fraction_bits(ColumnMeta(meta.name, "float", 0.0, square_max), square_max)
    return bits, round(square_max * (1 << bits)), lower, upper


def _sensitivity(base: BaseMeasure, row_bound: int, table: TableMeta, keys, direct: bool,
                 cells: int | None) -> Sensitivity:
    grouped = bool(keys)
    if direct:
        k = table.truncate_rows_per_unit
        l0 = min(k, cells) if (grouped and cells) else (k if grouped else 1)
        if base.kind == "units":
            return Sensitivity(l0=l0, linf=1, l1=l0, l2=math.sqrt(l0))
        linf = k * row_bound
        return Sensitivity(l0=l0, linf=linf, l1=linf, l2=float(linf))
    l0 = table.max_groups_per_unit if grouped else 1
    if cells:
        l0 = min(l0, cells)
    per_group = 1 if base.kind == "units" else table.max_rows_per_group * row_bound
    return Sensitivity(l0=l0, linf=per_group, l1=l0 * per_group, l2=math.sqrt(l0) * per_group)


def _has_threshold_measure(needed: list[BaseMeasure], table: TableMeta, direct: bool) -> bool:
    return any(b.kind == "units" for b in needed) or (
        not direct and table.max_rows_per_group == 1 and any(b.kind == "count" for b in needed))


def _count_measure_name(measures: tuple[Measure, ...]) -> str:
    """The count that decides which keys are released: units first (each unit adds 1 to a
    group, the smallest threshold for a given delta), else a row count capped at 1 row."""
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


def _clamped_fixed_point(column: str, lower: float, upper: float, bits: int,
                         center: float | None = None) -> exp.Expression:
    value = exp.Cast(this=_col(column), to=exp.DataType.build("DOUBLE"))
    clamped = exp.func("LEAST", exp.func("GREATEST", value, _num(lower)), _num(upper))
    if center is not None:
        shifted = exp.Sub(this=clamped, expression=_num(center))
        clamped = exp.Mul(this=exp.Paren(this=shifted), expression=exp.Paren(this=shifted.copy()))
    scaled = exp.Mul(this=exp.Paren(this=clamped), expression=exp.Literal.number(1 << bits))
    return exp.Cast(this=exp.func("ROUND", scaled), to=exp.DataType.build("BIGINT"))


def _num(value: float) -> exp.Expression:
    if float(value).is_integer():
        return exp.Literal.number(int(value))
    return exp.Literal.number(repr(float(value)))


def _bounded_sql(dataset: DatasetMeta, table: TableMeta, keys, measures, where, key_release,
                 direct: bool) -> exp.Select:
    source = exp.Table(this=_quoted(table.name), db=_quoted(dataset.name))
    src_columns: list[exp.Expression] = [exp.alias_(_col(table.privacy_unit), UNIT, quoted=True)]
    src_columns += [exp.alias_(_col(k.column), k.output, quoted=True) for k in keys]
    value_columns: dict[str, str] = {}
    for m in measures:
        if m.kind in ("sum", "sum_sq"):
            alias = f"v_{m.name}"
            center = (m.lower + m.upper) / 2 if m.kind == "sum_sq" else None
            src_columns.append(exp.alias_(
                _clamped_fixed_point(m.column, m.lower, m.upper, m.fixed_point_bits, center),
                alias, quoted=True))
            value_columns[m.name] = alias
        elif m.kind == "count_col":
            alias = f"v_{m.name}"
            src_columns.append(exp.alias_(_col(m.column), alias, quoted=True))
            value_columns[m.name] = alias
    conditions = []
    if where is not None:
        conditions.append(total_predicate(where))
    if key_release.mode == "public":
        for k in keys:
            if k.meta.public_keys is not None:
                conditions.append(exp.In(this=_col(k.column),
                                         expressions=[_literal(v) for v in k.meta.public_keys]))
    src = exp.select(*src_columns).from_(source)
    if conditions:
        src = src.where(exp.and_(*conditions))
    key_cols = [_col(k.output) for k in keys]

    if direct:
        final_aggs = [exp.alias_(_direct_aggregate(m, value_columns), m.name, quoted=True)
                      for m in measures]
        result = exp.select(*key_cols, *final_aggs).from_("src")
    else:
        per_unit_aggs = [exp.alias_(_per_unit_contribution(m, value_columns, table), f"c_{m.name}",
                                    quoted=True) for m in measures]
        per_unit = exp.select(_col(UNIT), *key_cols, *per_unit_aggs).from_("src").group_by(
            _col(UNIT), *[c.copy() for c in key_cols])
        bounded_from = "per_unit"
        ctes = [("src", src), ("per_unit", per_unit)]
        if keys and _needs_l0_window(table, key_release):
            order = exp.func("HASH", *[c.copy() for c in key_cols])
            row_number = exp.Window(this=exp.RowNumber(), partition_by=[_col(UNIT)],
                                    order=exp.Order(expressions=[exp.Ordered(this=order)]))
            bounded = exp.select("*").from_("per_unit").qualify(
                exp.LTE(this=row_number, expression=exp.Literal.number(table.max_groups_per_unit)))
            ctes.append(("bounded", bounded))
            bounded_from = "bounded"
        final_aggs = [exp.alias_(exp.func("SUM", _col(f"c_{m.name}")), m.name, quoted=True)
                      for m in measures]
        result = exp.select(*[c.copy() for c in key_cols], *final_aggs).from_(bounded_from)
        if keys:
            result = result.group_by(*[c.copy() for c in key_cols])
        for name, cte in ctes:
            result = result.with_(name, as_=cte)
        return result
    if keys:
        result = result.group_by(*[c.copy() for c in key_cols])
    return result.with_("src", as_=src)


def _needs_l0_window(table: TableMeta, key_release: KeyRelease) -> bool:
    if key_release.mode == "public" and len(key_release.public_cells) <= table.max_groups_per_unit:
        return False
    return True


def _per_unit_contribution(m: Measure, value_columns: dict[str, str], table: TableMeta):
    cap = exp.Literal.number(table.max_rows_per_group)
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
    return exp.Cast(this=exp.func("ROUND", exp.Mul(this=mean, expression=capped_rows)),
                    to=exp.DataType.build("BIGINT"))


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


def _postprocess(select: exp.Select, scope: TableScope, keys, uses, measures):
    by_base = {(m.kind, m.column): m for m in measures}
    key_by_column = {k.column: k for k in keys}
    outputs: list[OutputColumnSpec] = []
    projections = []
    for position, item in enumerate(select.expressions):
        alias = item.alias if isinstance(item, exp.Alias) else None
        body = item.this if isinstance(item, exp.Alias) else item
        rewritten, spec = _rewrite_output(body, scope, key_by_column, by_base)
        name = alias or _default_name(body)
        projections.append(exp.alias_(rewritten, name, quoted=True))
        outputs.append(OutputColumnSpec(name=name, type=spec[0], noisy=spec[1], measure=spec[2],
                                        ratio_of=spec[3]))
    post = exp.select(*projections).from_(NOISY_TABLE)
    if select.args.get("having") is not None:
        having, _ = _rewrite_output(select.args["having"].this, scope, key_by_column, by_base)
        post = post.where(having)
    if select.args.get("order") is not None:
        order = select.args["order"].copy()
        for ordered in order.expressions:
            target = ordered.this
            if isinstance(target, exp.Literal) or (isinstance(target, exp.Column) and not target.table
                                                   and _is_output_name(target.name, outputs)
                                                   and scope.meta.column(target.name) is None):
                continue
            rewritten, _ = _rewrite_output(target, scope, key_by_column, by_base)
            ordered.set("this", rewritten)
        post.set("order", order)
    for clause in ("limit", "offset"):
        node = select.args.get(clause)
        if node is not None:
            value = node.expression if clause == "limit" else node.expression
            if not (isinstance(value, exp.Literal) and not value.is_string):
                raise UnsupportedQuery(f"{clause.upper()} must be a number")
            post.set(clause, node.copy())
    return tuple(outputs), post


def _is_output_name(name: str, outputs) -> bool:
    return any(o.name.lower() == name.lower() for o in outputs)


def _default_name(body: exp.Expression) -> str:
    if isinstance(body, exp.Column):
        return body.name.lower()
    if isinstance(body, exp.AggFunc):
        return {"variance": "variance", "stddev": "stddev"}.get(body.sql_name().lower(),
                                                                 body.sql_name().lower())
    return "?column?"


def _rewrite_output(body: exp.Expression, scope: TableScope, key_by_column, by_base):
    """Rewrite an output expression over the noisy table; return (tree, (type, noisy,
    measure, ratio_of))."""

    def over_noisy(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.AggFunc):
            return _aggregate_expression(classify_aggregate(node, scope), by_base, scope)[0]
        if isinstance(node, exp.Column) and not _is_noisy_reference(node):
            key = key_by_column.get(scope.resolve(node))
            if key is None:
                raise PolicyRefused(f"column '{node.name}' is neither aggregated nor a GROUP BY "
                                    "key: raw values cannot be released")
            return _noisy_ref(key.output)
        return node

    tree = body.transform(over_noisy)
    if isinstance(body, exp.AggFunc):
        info = _aggregate_expression(classify_aggregate(body, scope), by_base, scope)[1]
    elif isinstance(body, exp.Column):
        key = key_by_column[scope.resolve(body)]
        info = (key.meta.type, False, None, None)
    else:
        info = (None, body.find(exp.AggFunc) is not None, None, None)
    return tree, info


_NOISY_MARK = "__noisy_ref"


def _noisy_ref(name: str) -> exp.Column:
    column = exp.Column(this=exp.to_identifier(name, quoted=True))
    column.meta[_NOISY_MARK] = True
    return column


def _is_noisy_reference(column: exp.Column) -> bool:
    return bool(column.meta.get(_NOISY_MARK))


def _aggregate_expression(use: AggregateUse, by_base, scope: TableScope):
    """The post-processing expression for one aggregate over the noisy measures."""
    fn, col = use.function, use.column
    by_base = _CanonicalLookup(by_base, scope.meta)
    if fn == "count":
        m = by_base[("count", None)]
        return _noisy_ref(m.name), ("int", True, m.name, None)
    if fn == "units":
        m = by_base[("units", None)]
        return _noisy_ref(m.name), ("int", True, m.name, None)
    if fn == "count_col":
        m = by_base[("count_col", col)]
        return _noisy_ref(m.name), ("int", True, m.name, None)
    meta = scope.meta.column(col)
    s = by_base[("sum", col)]
    total = _scaled(s)
    if fn == "sum":
        kind = "int" if s.fixed_point_bits == 0 and meta.type == "int" else "float"
        return total, (kind, True, s.name, None)
    n = by_base[("count_col", col)]
    count = exp.func("GREATEST", _noisy_ref(n.name), exp.Literal.number(1))
    lower, upper = float(meta.lower), float(meta.upper)
    mean = exp.Div(this=exp.Cast(this=total, to=exp.DataType.build("DOUBLE")), expression=count)
    clamp = lambda e, lo, hi: exp.func("LEAST", exp.func("GREATEST", e, _num(lo)), _num(hi))
    if fn == "avg":
        return clamp(mean, lower, upper), ("float", True, None, (s.name, n.name))
    sq = by_base[("sum_sq", col)]
    center = (lower + upper) / 2
    half_width = (upper - lower) / 2
    centred_mean = exp.Sub(this=clamp(mean, lower, upper), expression=_num(center))
    mean_square = exp.Div(this=exp.Cast(this=_scaled(sq), to=exp.DataType.build("DOUBLE")),
                          expression=count.copy())
    variance = exp.Sub(this=mean_square, expression=exp.Mul(this=exp.Paren(this=centred_mean),
                                                            expression=exp.Paren(this=centred_mean.copy())))
    if fn in ("var_samp", "std_samp"):
        correction = exp.Div(this=exp.Cast(this=count.copy(), to=exp.DataType.build("DOUBLE")),
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


class _CanonicalLookup:
    """Measure lookup by (kind, column) that follows _canonical_measure's merges."""

    def __init__(self, by_base, table: TableMeta):
        self._by_base = by_base
        self._table = table

    def __getitem__(self, key):
        kind, column = key
        if key in self._by_base:
            return self._by_base[key]
        # Not planned under its own name, so it was merged (merges apply off the direct path
        # or regardless of it).
        merged = _canonical_measure(BaseMeasure(kind, column), self._table, direct=False)
        return self._by_base[(merged.kind, merged.column)]

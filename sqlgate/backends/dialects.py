"""Translate the rewriter's DuckDB-dialect bounded SQL for PostgreSQL and Spark SQL.

A plain sqlglot transpile is not enough, and is unsafe for some constructs:

* `TRY(expr)` (DuckDB: any runtime error -> NULL) is *dropped* by sqlglot for both targets,
  which would let an error depend on a data value (privacy rule 6).
  - PostgreSQL: an expression made only of operators that cannot fail on data (comparisons,
    AND/OR/NOT, IN, IS, COALESCE, CASE over such, LOWER/UPPER/LENGTH/TRIM, concatenation,
    LIKE with a literal pattern, safe casts below) is emitted as is. Anything else (arithmetic,
    casts, date and string functions ...) becomes a call of a per-query PL/pgSQL function in
    pg_temp that evaluates the expression over the row(s) and returns NULL on any
    `data_exception` (SQLSTATE class 22: division by zero, overflow, invalid input ...). Errors
    outside class 22 (type errors, unknown functions) depend on the query only and still fail.
  - Spark: the session runs with spark.sql.ansi.enabled=false (nothing raises), and every
    operation that raises in DuckDB (integer overflow, modulo / integer division by zero)
    adds a failure condition built with try_add/try_subtract/try_multiply; the TRY becomes
    `CASE WHEN <any failure> THEN NULL ELSE expr END` (sqlgate/backends/totality.py), so one
    failing operation nulls the whole expression exactly as in DuckDB.
* `add()/subtract()/multiply()` (the rewriter's overflow-safe spelling of + - *, which DuckDB's
  optimizer cannot rewrite) become operators again; `/` is DuckDB's floating-point division,
  x/0 giving +-inf or NaN on every engine (totality.py).
* `TRY_CAST(x AS T)` becomes, on PostgreSQL, a pg_temp helper that returns NULL when the cast
  fails (an integer target also accepts decimal text, rounding, like DuckDB).
* `HASH(...)` (DuckDB's 64-bit hash, only used to order a unit's groups/rows deterministically)
  becomes MD5(CONCAT_WS(CHR(31), CAST(arg AS TEXT), ...)) on both targets, so PostgreSQL and
  Spark keep the same groups. (DuckDB keeps possibly different ones: same bounds, same
  sensitivity, different choice; identical only if the rewriter uses the MD5 form too.)
* `ROUND(x)` on PostgreSQL rounds doubles half-to-even; DuckDB and Spark round half away from
  zero. It becomes sign(x) * (floor(|x|) + (|x| - floor(|x|) >= 0.5)), exact in doubles.
  `ROUND(x, n)` casts x to NUMERIC (PostgreSQL has no round(double, int)).
* `AVG(bigint)` is NUMERIC on PostgreSQL; it is cast to DOUBLE PRECISION as in DuckDB, so the
  per-unit fixed-point contributions round identically.
* `QUALIFY` is rewritten by sqlglot into a subquery with the window column (both targets).
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from typing import Mapping

import sqlglot
from sqlglot import exp

from sqlgate.backends import totality
from sqlgate.errors import UnsupportedQuery

DIALECTS = ("postgres", "spark")


@dataclass(frozen=True)
class EngineSQL:
    """Statements to run, in order, inside one transaction; only `query` returns rows."""

    query: str
    setup: tuple[str, ...] = field(default=())


def translate(sql: str, dialect: str, *, tables: Mapping[tuple[str, str], str] | None = None) -> EngineSQL:
    """DuckDB-dialect SQL from the rewriter -> SQL for `dialect` (postgres | spark).

    `tables` maps (schema, table) to the engine's name for it (Spark temp views)."""
    if dialect not in DIALECTS:
        raise ValueError(f"unsupported dialect {dialect!r}")
    tree = sqlglot.parse_one(sql, read="duckdb")
    tree = _replace_hash(tree)
    if tables:
        tree = _rename_tables(tree, tables)
    tree = totality.operator_forms(tree)
    if dialect == "postgres":
        tree = totality.duckdb_division(tree, "DOUBLE")
        return _PostgresTranslator().translate(tree)
    tree = totality.duckdb_division(tree, "DOUBLE")
    tree = totality.spark_try(tree)
    tree = _spark_exact_sums(tree)
    return EngineSQL(tree.sql(dialect="spark"))


def _spark_exact_sums(tree: exp.Expression) -> exp.Expression:
    """SUM(x) -> SUM(CAST(x AS DECIMAL(38, 0))) on Spark.

    Every SUM in the rewriter's SQL adds integers (fixed-point values, counts, per-unit
    contributions). DuckDB sums them into HUGEINT and PostgreSQL into NUMERIC; Spark sums a
    BIGINT into a BIGINT, and with ANSI mode off it wraps around silently at 2^63: a sum
    that jumps by 2^64 when one person is added breaks every sensitivity bound (per-row
    values may reach 2^53, so about a thousand rows would do). In DECIMAL(38, 0) an overflow
    needs some 10^22 rows, and gives NULL rather than a wrapped value."""
    def widen(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Sum):
            node.set("this", exp.Cast(this=node.this, to=exp.DataType.build("DECIMAL(38, 0)")))
        return node
    return tree.transform(widen, copy=False)


# ---------------------------------------------------------------- both targets


def _replace_hash(tree: exp.Expression) -> exp.Expression:
    def replace(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Anonymous) and node.name.upper() == "HASH":
            # NULL becomes CHR(30) so that NULL keys still order deterministically.
            parts = [exp.Coalesce(this=exp.Cast(this=arg.copy(), to=exp.DataType.build("TEXT")),
                                  expressions=[exp.func("CHR", exp.Literal.number(30))])
                     for arg in node.expressions]
            joined = exp.Anonymous(this="CONCAT_WS",
                                   expressions=[exp.func("CHR", exp.Literal.number(31)), *parts])
            return exp.MD5(this=joined)
        return node
    return tree.transform(replace)


def _rename_tables(tree: exp.Expression, tables: Mapping[tuple[str, str], str]) -> exp.Expression:
    lowered = {(s.lower(), t.lower()): name for (s, t), name in tables.items()}
    for table in list(tree.find_all(exp.Table)):
        key = ((table.db or "").lower(), table.name.lower())
        if key in lowered:
            alias = table.alias or table.name
            table.set("db", None)
            table.set("this", exp.to_identifier(lowered[key], quoted=True))
            table.set("alias", exp.TableAlias(this=exp.to_identifier(alias, quoted=True)))
    return tree


# ---------------------------------------------------------------- PostgreSQL

_SAFE_PG = (
    exp.Column, exp.Identifier, exp.Literal, exp.Boolean, exp.Null, exp.Paren, exp.Star,
    exp.And, exp.Or, exp.Not, exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Is,
    exp.In, exp.Between, exp.NullSafeEQ, exp.NullSafeNEQ, exp.Coalesce, exp.Case, exp.If,
    exp.Lower, exp.Upper, exp.Length, exp.Trim, exp.DPipe, exp.Concat, exp.Greatest, exp.Least,
    exp.Tuple,
)


class _PostgresTranslator:
    def __init__(self):
        self.setup: list[str] = []
        self._helpers: dict[str, str] = {}
        self._guarded: dict[tuple[str, str, str], str] = {}
        self._tag = "sg" + secrets.token_hex(6)

    def translate(self, tree: exp.Expression) -> EngineSQL:
        tree = tree.transform(_average_as_double)
        tree = tree.transform(_round_like_duckdb)
        for try_node in list(tree.find_all(exp.Try)):
            if try_node.find_ancestor(exp.Try) is None:
                try_node.replace(self._total(try_node))
        for cast in list(tree.find_all(exp.TryCast)):
            cast.replace(self._try_cast(cast))
        return EngineSQL(tree.sql(dialect="postgres"), tuple(self.setup))

    # -------------------------------------------------------- TRY()

    def _total(self, node: exp.Try) -> exp.Expression:
        inner = node.this
        for cast in list(inner.find_all(exp.TryCast)):
            cast.replace(self._try_cast(cast))
        if isinstance(inner, exp.TryCast):
            inner = self._try_cast(inner)
        if _is_safe(inner):
            return exp.Paren(this=inner)
        return self._guarded_function(node, inner)

    def _guarded_function(self, try_node: exp.Try, inner: exp.Expression) -> exp.Expression:
        """pg_temp.fn(rows...) evaluating `inner` with data exceptions turned into NULL."""
        select = try_node.find_ancestor(exp.Select)
        sources = _row_sources(select)
        params: dict[str, tuple[str, exp.Table]] = {}
        body = inner.copy()
        for column in list(body.find_all(exp.Column)):
            qualifier = column.table or (next(iter(sources)) if len(sources) == 1 else "")
            source = sources.get(qualifier.lower()) if qualifier else None
            if source is None:
                raise UnsupportedQuery("an expression in this query cannot be made safe for "
                                       "PostgreSQL (its columns do not come from a table)")
            key = qualifier.lower()
            if key not in params:
                params[key] = (f"r{len(params)}", source)
            column.replace(exp.Dot(this=exp.Paren(this=exp.column(params[key][0])),
                                   expression=exp.to_identifier(column.name, quoted=True)))
        result_type = _result_type(inner)
        args = ", ".join(f"{param} {_table_type(table)}" for param, table in params.values())
        body_sql = self._checked_body(body.sql(dialect="postgres"))
        signature = (args, result_type, body_sql)
        name = self._guarded.get(signature)
        if name is None:
            name = f"sqlgate_expr_{len(self._guarded)}"
            self._guarded[signature] = name
            self.setup.append(
                f"CREATE FUNCTION pg_temp.{name}({args}) RETURNS {result_type} LANGUAGE plpgsql "
                f"IMMUTABLE AS ${self._tag}$ BEGIN RETURN {body_sql}; "
                f"EXCEPTION WHEN data_exception THEN RETURN NULL; END ${self._tag}$")
        # `alias.*` as an argument passes the whole row as one composite value.
        call_args = [exp.Column(this=exp.Star(), table=exp.to_identifier(table.alias_or_name, quoted=True))
                     for _, table in params.values()]
        return exp.Anonymous(this=f"pg_temp.{name}", expressions=call_args)

    def _checked_body(self, text: str) -> str:
        if f"${self._tag}$" in text:  # the random dollar-quote tag must not occur in the body
            raise UnsupportedQuery("the query cannot be prepared for PostgreSQL")
        return text

    # -------------------------------------------------------- TRY_CAST

    def _try_cast(self, cast: exp.TryCast) -> exp.Expression:
        target = cast.to.sql(dialect="postgres")
        name = self._helpers.get(target)
        if name is None:
            name = "sqlgate_try_" + hashlib.sha256(target.encode()).hexdigest()[:12]
            self._helpers[target] = name
            integer = cast.to.this in exp.DataType.INTEGER_TYPES
            fallback = (f"BEGIN RETURN round(v::text::numeric)::{target}; "
                        "EXCEPTION WHEN data_exception THEN RETURN NULL; END;" if integer
                        else "RETURN NULL;")
            self.setup.append(
                f"CREATE FUNCTION pg_temp.{name}(v anyelement) RETURNS {target} LANGUAGE plpgsql "
                f"IMMUTABLE AS ${self._tag}$ BEGIN RETURN v::{target}; "
                f"EXCEPTION WHEN data_exception THEN {fallback} END ${self._tag}$")
        value = cast.this
        if isinstance(value, exp.Literal) or isinstance(value, exp.Null):
            value = exp.Cast(this=value, to=exp.DataType.build("TEXT"))  # no 'unknown' type
        return exp.Anonymous(this=f"pg_temp.{name}", expressions=[value])

    # -------------------------------------------------------- rounding and averages


def _average_as_double(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Avg):
        return exp.Cast(this=node.copy(), to=exp.DataType.build("DOUBLE"))
    return node


def _round_like_duckdb(node: exp.Expression) -> exp.Expression:
    if isinstance(node, exp.Round):
        value = node.this.transform(_round_like_duckdb)  # replaced nodes are not revisited
        if node.args.get("decimals") is not None:
            return exp.Round(this=exp.Cast(this=value, to=exp.DataType.build("DECIMAL")),
                             decimals=node.args["decimals"].copy())
        return _round_half_away(value)
    return node


def _round_half_away(value: exp.Expression) -> exp.Expression:
    magnitude = exp.Abs(this=exp.Paren(this=value.copy()))
    floor = exp.Floor(this=magnitude.copy())
    up = exp.Case(ifs=[exp.If(this=exp.GTE(this=exp.Sub(this=magnitude.copy(), expression=floor.copy()),
                                            expression=exp.Literal.number(0.5)),
                              true=exp.Literal.number(1))],
                  default=exp.Literal.number(0))
    return exp.Paren(this=exp.Mul(this=exp.func("SIGN", exp.Paren(this=value.copy())),
                                  expression=exp.Paren(this=exp.Add(this=floor, expression=up))))


def _is_safe(node: exp.Expression) -> bool:
    for sub in node.walk():
        if isinstance(sub, exp.DataType):
            continue
        if isinstance(sub, exp.Anonymous) and sub.name.startswith("pg_temp.sqlgate_try_"):
            continue
        if isinstance(sub, (exp.Like, exp.ILike)):
            pattern = sub.expression
            if not (isinstance(pattern, exp.Literal) and pattern.is_string
                    and not pattern.this.endswith("\\")) or sub.args.get("escape"):
                return False
            continue
        if not isinstance(sub, _SAFE_PG):
            return False
    return True


def _row_sources(select: exp.Select | None) -> dict[str, exp.Table]:
    """The base tables a SELECT reads, by the name its columns use for them."""
    sources: dict[str, exp.Table] = {}
    if select is None:
        return sources
    items = []
    if select.args.get("from_") is not None:
        items.append(select.args["from_"].this)
    elif select.args.get("from") is not None:
        items.append(select.args["from"].this)
    items += [join.this for join in select.args.get("joins") or []]
    for item in items:
        if isinstance(item, exp.Table) and isinstance(item.this, exp.Identifier):
            sources[(item.alias_or_name or item.name).lower()] = item
    return sources


def _table_type(table: exp.Table) -> str:
    name = exp.Table(this=table.this.copy(), db=table.args.get("db").copy() if table.args.get("db") else None)
    return name.sql(dialect="postgres")


def _result_type(inner: exp.Expression) -> str:
    if isinstance(inner, (exp.Predicate, exp.Connector, exp.Not, exp.Boolean, exp.In,
                          exp.Between, exp.Is)):
        return "boolean"
    if isinstance(inner, (exp.Cast, exp.TryCast)):
        return inner.to.sql(dialect="postgres")
    if isinstance(inner, exp.Paren):
        return _result_type(inner.this)
    if isinstance(inner, exp.Case):
        results = [b.args.get("true") for b in inner.args.get("ifs") or []]
        results.append(inner.args.get("default"))
        literals = [r for r in results if isinstance(r, exp.Literal)]
        if literals and all(r.is_string for r in literals):
            return "text"
        if literals and all(not r.is_string for r in literals):
            if all(_is_integer_text(r.this) for r in literals):
                return "bigint"
            return "double precision"
        if results and all(isinstance(r, (exp.Predicate, exp.Boolean)) for r in results if r is not None):
            return "boolean"
    raise UnsupportedQuery("an expression in this query cannot be made safe for PostgreSQL "
                           "(its result type is not known without running it)")


def _is_integer_text(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False

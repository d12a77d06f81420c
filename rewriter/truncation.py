"""Query-time truncation: read a private table as if its owner had kept at most k rows per
unit at ingest (`max_rows_per_unit`).

The choice rule is the ingest rule of the DuckDB catalog (sqlgate/catalog.py): a unit keeps
its k rows with the smallest HASH of the whole row (every declared column, in metadata
order). Ties in the hash are broken by the columns themselves, so the kept rows are a
function of the unit's own rows only: never of other units, physical order or threads
(rows equal in every column are interchangeable). Truncating each unit by a rule over its
own rows maps neighbouring datasets to neighbouring datasets, so everything planned on top
(joins, WHERE, the direct path's clamped sums) keeps its sensitivity argument.

SQL shape, chosen with EXPLAIN ANALYZE on TPC-H orders (DuckDB 2.0, SF 0.1, 2 threads):
a window over every row (`QUALIFY row_number() OVER (PARTITION BY unit ORDER BY hash(row))
<= k`) costs 15-30 ms where the raw aggregate costs 0.4-3 ms, because it partitions and
sorts the whole table. Most units have at most k rows and need no ranking at all, so the
table is split by the set of units over k rows (one hash aggregate over the unit column):

    light: rows of units not over k, all kept (an anti-join against the few heavy units;
           the query's filters are pushed into this scan)
    heavy: rows of units over k, ranked by the hash rule, k kept

    (WITH heavy_units AS (SELECT unit FROM t GROUP BY unit HAVING COUNT(*) > k)
     SELECT cols FROM t WHERE NOT EXISTS (heavy unit = t.unit) AND t.unit IS NOT NULL
     UNION ALL
     SELECT cols FROM (... WHERE EXISTS (heavy unit = t.unit))
     QUALIFY ROW_NUMBER() OVER (PARTITION BY unit ORDER BY HASH(cols), cols) <= k)

which costs 2-4 ms over the raw aggregate when few units exceed k; when many do, the
ranking dominates as in the plain window (SF 0.1 orders at k = 8, 93% of the rows in units
over k: ~32 ms). Both halves keep exactly the rows the plain window would keep (units are
never NULL: load refuses them). An earlier shape joined every row to a count per unit
(rows <= k / rows > k); probing the small set of heavy units instead is 3-15% faster on the
TPC-H query-time suite at SF 1 (q14: 55 -> 34 ms), the same rows.

On PostgreSQL and Spark the translation turns HASH into an MD5 of the row's text
(sqlgate/backends/dialects.py), so those engines may keep other rows than DuckDB at query
time: the same bound and sensitivity, and still a choice made from the unit's own rows only.
Ingest truncation is one SQL text for every engine (`ingest_truncation_sql`): the DuckDB
catalog runs it on its staged tables, and the loader for external engines
(sqlgate/backends/loading.py) runs it in an in-process DuckDB over the checked rows, so
both store the very same rows.

The tie-break columns cost nothing measurable in this shape (k = 8 above: 31-33 ms with
them, 41-43 ms ordering by the hash alone, where DuckDB turns the window into a top-k
aggregate); they are what makes the choice independent of physical order.

Stored rank (DuckDB catalog only). The split above still costs ~4 ms over a 2.7 ms raw
GROUP BY on SF 0.1 orders with no unit over k: the anti-join and UNION ALL themselves, not
the heavy-unit set. The rank of a row within its unit by this very rule does not depend on
k, so the catalog computes it once at load (`rank_value`, over the stored rows) into a
hidden column named after the rule (`stored_rank_column`: a version tag and the rule's
inputs, so a catalog file that does not match its tables names a column that is not
there), and records it in `TableMeta.stored_rank`. The read is then a filter,
`(SELECT cols FROM t WHERE rank <= k)`: the same rows (per unit the k first by the rule,
all of them when it has no more), only not ranked per query. The column is a USMALLINT
saturating at `RANK_CAP` (2 bytes a row in memory where a BIGINT takes 8), so it is used
only for k < RANK_CAP; larger k, other engines, federated plans and catalogs saved before
read through the SQL above.
"""
from __future__ import annotations

import functools
import hashlib
import json

from sqlglot import exp

from sqlgate.metadata import TableMeta, stored_sum_column

_HEAVY = "__heavy_units"
_UNIT = "__u"

RANK_RULE = "v1"
"""Version of the stored rank, part of its column name (with the SQL of the rule itself):
bump it when the meaning of that SQL changes without its text (e.g. a new HASH), so a
column computed by an older rule is never read as this one."""
RANK_CAP = 65535
"""The stored rank saturates here (the largest USMALLINT): `rank <= k` is exact for k < it."""


def truncation_order(columns: list[exp.Expression]) -> list[exp.Ordered]:
    """ORDER BY of the choice rule: the row's HASH, ties broken by the row itself."""
    return [exp.Ordered(this=exp.func("HASH", *[c.copy() for c in columns]))] + [
        exp.Ordered(this=c.copy()) for c in columns]


def ingest_truncation_sql(table: TableMeta, staged: str, parent: TableMeta | None = None,
                          parent_stored: str | None = None) -> str:
    """DuckDB SELECT of the rows `table` keeps at ingest (`truncate_rows_per_unit` = k),
    reading its checked rows from the relation `staged` (quoted SQL name).

    Own privacy unit: per unit, the k rows first in `truncation_order`.

    `unit_via` (child -> parent.references, the parent carrying the unit): the child's rows
    are joined to the parent's STORED rows (`parent_stored`, itself truncated if declared) on
    child.column = parent.references and ranked per parent unit by the same rule over the
    child's own columns. The loader has proved parent.references distinct and of the child
    column's type (metadata.enforced_key_columns), so each child row joins at most one parent
    row: its unit is a function of that row, and the kept rows of a unit depend on that
    unit's rows only. Rows joining no parent row (orphans, or whose parent row was truncated
    away) are dropped: a unit_via table can only be queried joined to its parent, where they
    would meet nothing anyway.
    """
    k = int(table.truncate_rows_per_unit)
    names = list(table.columns)
    order = ", ".join(o.sql(dialect="duckdb") for o in truncation_order(
        [_qcol(n, "__c") for n in names]))
    select = ", ".join(_qcol(n, "__c").sql(dialect="duckdb") for n in names)
    if table.privacy_unit:
        return (f'SELECT {select} FROM {staged} AS "__c" QUALIFY row_number() OVER '
                f'(PARTITION BY "__c"."{table.privacy_unit}" ORDER BY {order}) <= {k}')
    via = table.unit_via
    if via is None or parent is None or parent_stored is None or parent.privacy_unit is None:
        raise ValueError("ingest truncation needs the table's privacy unit or its loaded parent")
    return (f'SELECT {select} FROM {staged} AS "__c" JOIN {parent_stored} AS "__p" '
            f'ON "__c"."{via.column}" = "__p"."{via.references}" QUALIFY row_number() OVER '
            f'(PARTITION BY "__p"."{parent.privacy_unit}" ORDER BY {order}) <= {k}')


def stored_rank_column(table: TableMeta) -> str:
    """The hidden column holding `table`'s stored rank. `$` is not legal in a declared name,
    so it never collides with a declared column. The name spells out the rule's version and
    a digest of the rule as computed for this table (the SQL of `rank_value`: unit, declared
    columns in order, ordering, cap and type) and of the columns' declared types (what HASH
    reads), so a stale record or a changed rule never names a column computed otherwise.
    It does not depend on k."""
    if table.privacy_unit is None:
        raise ValueError("a stored rank needs a table with its own privacy unit")
    return _rank_column_name(table.privacy_unit,
                             tuple((name, column.type) for name, column in table.columns.items()))


@functools.lru_cache(maxsize=256)
def _rank_column_name(unit: str, columns: tuple[tuple[str, str], ...]) -> str:
    # Memoised: rendering the rule costs ~0.4 ms, and every plan of such a table asks.
    spec = json.dumps([RANK_RULE, _rank(unit, [name for name, _ in columns], "r")
                       .sql(dialect="duckdb"), [kind for _, kind in columns]])
    return f"__rank${RANK_RULE}${hashlib.sha256(spec.encode()).hexdigest()[:16]}"


def rank_value(table: TableMeta, relation: str) -> exp.Expression:
    """Each row's position within its unit by the truncation rule, over the declared columns
    of `relation` (an alias), saturating at RANK_CAP: what the catalog stores at load."""
    if table.privacy_unit is None:
        raise ValueError("a stored rank needs a table with its own privacy unit")
    return _rank(table.privacy_unit, list(table.columns), relation)


def _rank(unit: str, names: list[str], relation: str) -> exp.Expression:
    rank = exp.Window(this=exp.RowNumber(), partition_by=[_qcol(unit, relation)],
                      order=exp.Order(expressions=truncation_order(
                          [_qcol(n, relation) for n in names])))
    capped = exp.func("LEAST", rank, exp.Literal.number(RANK_CAP))
    return exp.Cast(this=capped, to=exp.DataType.build("USMALLINT", dialect="duckdb"))


def reads_stored_rank(table: TableMeta, k: int) -> bool:
    """Whether a truncation to k rows reads the catalog's stored rank: recorded by the loader
    under the name the current metadata gives it, and k below the cap."""
    return (table.privacy_unit is not None and table.stored_rank is not None
            and table.stored_rank == stored_rank_column(table) and 0 < k < RANK_CAP)


def truncated_read(table: TableMeta, node: exp.Table, alias: str, k: int) -> exp.Subquery:
    """`(rows of `node` with at most k per unit) AS alias`, with the table's columns and its
    hidden stored-sum columns (TableMeta.stored_sums). The choice of rows (hash and
    tie-break) reads the declared columns only, so the kept rows do not depend on what the
    catalog stored beside them: they are the rows the same table without them keeps. With a
    stored rank (`reads_stored_rank`) the read is a filter on it; otherwise the split by
    units over k rows of the module docstring."""
    names = list(table.columns)
    projected = names + [stored_sum_column(c, s) for c, s in table.stored_sums.items()]
    unit = table.privacy_unit
    if unit is None:
        raise ValueError("query-time truncation needs a table with its own privacy unit")

    def table_node(alias: str | None = None) -> exp.Table:
        db = node.args.get("db")
        return exp.Table(this=node.this.copy(), db=db.copy() if db else None,
                         alias=exp.TableAlias(this=_ident(alias)) if alias else None)

    if reads_stored_rank(table, k):
        # Units are never NULL (refused at load), so no row the split drops is kept here.
        kept = (exp.select(*[_qcol(n) for n in projected]).from_(table_node())
                .where(exp.LTE(this=_qcol(stored_rank_column(table)),
                               expression=exp.Literal.number(k))))
        return _aliased(kept, alias)

    def rows(exists: bool) -> exp.Select:
        """The rows of units that are (exists) or are not over k rows."""
        heavy_unit = (exp.select(exp.Literal.number(1)).from_(_HEAVY)
                      .where(exp.EQ(this=_qcol(_UNIT, _HEAVY), expression=_qcol(unit, "__t"))))
        test = exp.Exists(this=heavy_unit)
        if not exists:
            # Units are never NULL (checked at load); the old join dropped such rows too.
            test = exp.and_(exp.Not(this=test),
                            exp.Not(this=exp.Is(this=_qcol(unit, "__t"), expression=exp.Null())))
        return exp.select(*[_qcol(n, "__t") for n in projected]).from_(table_node("__t")).where(test)

    heavy_units = (exp.select(exp.alias_(_qcol(unit), _UNIT, quoted=True)).from_(table_node())
                   .group_by(_qcol(unit))
                   .having(exp.GT(this=exp.Count(this=exp.Star()), expression=exp.Literal.number(k))))
    light = rows(exists=False)
    rank = exp.Window(this=exp.RowNumber(), partition_by=[_qcol(unit)],
                      order=exp.Order(expressions=truncation_order([_qcol(n) for n in names])))
    heavy = (exp.select(*[_qcol(n) for n in projected])
             .from_(_aliased(rows(exists=True), "__h"))
             .qualify(exp.LTE(this=rank, expression=exp.Literal.number(k))))
    union = exp.union(light, heavy, distinct=False).with_(_HEAVY, as_=heavy_units)
    return _aliased(union, alias)


def _aliased(query: exp.Expression, alias: str) -> exp.Subquery:
    return exp.Subquery(this=query, alias=exp.TableAlias(this=_ident(alias)))


def _ident(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def _qcol(name: str, table: str | None = None) -> exp.Column:
    return exp.Column(this=_ident(name), table=_ident(table) if table else None)

"""The tables a query reads, how they are joined, and which column is the privacy unit.

Joins are allowed only when every joined row still belongs to exactly one unit, whose own
rows alone decide it: private tables must be joined on their unit columns, or along a
declared foreign-key path to the table holding the unit; public tables may be joined freely.
Contributions are then bounded per unit AFTER the join, so a join that repeats a unit's rows
(a self-join on the unit, a fan-out to a public table) cannot raise the sensitivity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

from sqlglot import exp

from rewriter.rowexpr import check_row_expression, conjuncts, total_condition
from rewriter.truncation import truncated_read
from sqlgate.errors import PolicyRefused, UndefinedColumn, UnsupportedQuery
from sqlgate.metadata import ColumnMeta, DatasetMeta, TableMeta

TableResolver = Callable[[exp.Table], "tuple[DatasetMeta, TableMeta]"]


@dataclass(frozen=True)
class Source:
    alias: str
    dataset: DatasetMeta
    table: TableMeta

    @property
    def private(self) -> bool:
        return not self.table.public


@dataclass
class QueryScope:
    """Sources by alias; column references are strings 'alias.column'."""

    sources: dict[str, Source]
    joins: list[tuple[str, str, exp.Expression]] = field(default_factory=list)
    """(join kind, alias, ON condition over qualified refs) for every joined source."""
    first: str = ""
    unit_ref: str = ""

    # ------------------------------------------------------------ resolution

    def resolve(self, column: exp.Column) -> str:
        name = column.name.lower()
        qualifier = column.table.lower() if column.table else ""
        if qualifier:
            source = self.sources.get(qualifier)
            if source is None:
                raise UndefinedColumn(f"column reference {column.sql()} names an unknown table "
                                      f"'{column.table}'")
            if source.table.column(name) is None:
                raise UndefinedColumn(f"column '{column.name}' does not exist in table "
                                      f"'{source.table.name}'")
            return f"{qualifier}.{name}"
        owners = [alias for alias, s in self.sources.items() if s.table.column(name) is not None]
        if not owners:
            tables = ", ".join(sorted({s.table.name for s in self.sources.values()}))
            raise UndefinedColumn(f"column '{column.name}' does not exist in {tables}")
        if len(owners) > 1:
            raise UndefinedColumn(f"column reference '{column.name}' is ambiguous; qualify it "
                                  f"({', '.join(f'{o}.{name}' for o in owners)})")
        return f"{owners[0]}.{name}"

    def meta(self, ref: str) -> ColumnMeta:
        alias, name = ref.split(".", 1)
        return self.sources[alias].table.column(name)

    def expr(self, ref: str) -> exp.Column:
        alias, name = ref.split(".", 1)
        return exp.Column(this=exp.to_identifier(name, quoted=True),
                          table=exp.to_identifier(alias, quoted=True))

    def is_unit(self, ref: str) -> bool:
        alias, name = ref.split(".", 1)
        table = self.sources[alias].table
        return table.privacy_unit == name

    # ------------------------------------------------------------ properties of the join

    @property
    def dataset(self) -> DatasetMeta:
        return self.sources[self.first].dataset

    @property
    def private_sources(self) -> list[Source]:
        return [s for s in self.sources.values() if s.private]

    @property
    def max_groups_per_unit(self) -> int:
        return max(s.table.max_groups_per_unit for s in self.private_sources)

    @property
    def max_rows_per_group(self) -> int:
        return max(s.table.max_rows_per_group for s in self.private_sources)

    @property
    def truncate_rows_per_unit(self) -> int | None:
        """Rows one unit can have in the FROM clause when its tables are truncated per unit
        (at ingest, `truncate_rows_per_unit`, or when read, `max_rows_per_unit`: the
        smaller of the two, `TableMeta.rows_per_unit`), from metadata only; None: no bound,
        contributions are then bounded per unit (L0 x Linf).

        One private table read once: its k. Otherwise every private source must be INNER-
        joined, every public source joined ON a unique column of its own
        (`_public_joins_unique`), and the private sources connected by bare top-level
        conjuncts of INNER joins' ON conditions of two kinds (`_links`):
          unit:  a.unit = b.unit, both sources with their own privacy unit;
          key:   c.fk = p.key, where (fk -> p.key) is c's declared `unit_via`, p.key is an
                 enforced key of p (`TableMeta.unique_columns`: the loader refused the data
                 unless its values are distinct) and both columns have the same declared type.
        A source p is *determined* when a key link reaches it from a source that is itself
        in R or determined; R (`bounding_sources`) is the set of private sources no key
        link reaches. Every private source is then in R or determined, and the bound is the
        product of the k of the sources in R.

        Why: every conjunct of an INNER join's ON holds on every joined row (LEFT joins of
        public tables keep or pad rows, never filter, so their ON conditions are not used),
        and WHERE only removes rows. Fix a unit u. A unit link makes both rows belong to
        one unit. A key link makes the child row meet exactly the one parent row whose key
        it holds, and that is the row the child row was truncated through at ingest (the
        loader ranks a unit_via table per unit of the stored parent row it joins), so both
        rows are of one unit and a child row determines its parent row. Connected, every
        row in a joined row is of the unit u of the unit column (`unit_ref`, a source with
        its own unit). A joined row of u is then fixed by its rows of the sources in R (the
        others follow through key links; public rows, at most one each), each of them one
        of that source's at most k rows of u: at most the product of those k.
        So lineitem JOIN orders ON l_orderkey = o_orderkey has at most k_lineitem rows per
        unit (each line meets one order), not k_lineitem x k_orders; a key link without the
        enforced key (a parent row could repeat a key) or not at the top level gives None.
        """
        private = self.private_sources
        if len(private) == 1 and len(self.sources) == 1:
            return private[0].table.rows_per_unit
        if not self._public_joins_unique():
            return None
        private_aliases = {s.alias for s in private}
        if any(kind != "INNER" for kind, alias, _ in self.joins if alias in private_aliases):
            return None
        bounding = self.bounding_sources()
        if bounding is None:
            return None
        bounds = [self.sources[alias].table.rows_per_unit for alias in bounding]
        if not all(bounds):
            return None
        return math.prod(bounds)

    def _links(self) -> list[tuple[str, str, str]]:
        """("unit", a, b) and ("key", child, parent) links among private sources, from bare
        top-level conjuncts of INNER joins' ON conditions (see truncate_rows_per_unit)."""
        links = []
        for left, right in self.inner_column_equalities():
            a, b = left.split(".", 1)[0], right.split(".", 1)[0]
            if a == b or not (self.sources[a].private and self.sources[b].private):
                continue
            if self.is_unit(left) and self.is_unit(right):
                links.append(("unit", a, b))
            for child, parent in ((left, right), (right, left)):
                if self._enforced_key_link(child, parent):
                    links.append(("key", child.split(".", 1)[0], parent.split(".", 1)[0]))
        return links

    def column_equalities(self, condition: exp.Expression) -> Iterator[tuple[str, str]]:
        """(left, right) resolved references of the bare top-level `col = col` conjuncts of
        one ON condition: the only conjuncts that hold on every joined row as written."""
        for eq in conjuncts(condition):
            if (isinstance(eq, exp.EQ) and isinstance(eq.this, exp.Column)
                    and isinstance(eq.expression, exp.Column)):
                yield self.resolve(eq.this), self.resolve(eq.expression)

    def inner_column_equalities(self) -> Iterator[tuple[str, str]]:
        """column_equalities of every INNER join. A LEFT join's ON keeps or pads rows and
        filters nothing: an equality there does not make joined rows share anything."""
        for kind, _, condition in self.joins:
            if kind == "INNER":
                yield from self.column_equalities(condition)

    def _enforced_key_link(self, child_ref: str, parent_ref: str) -> bool:
        child_alias, child_col = child_ref.split(".", 1)
        parent_alias, parent_col = parent_ref.split(".", 1)
        child, parent = self.sources[child_alias].table, self.sources[parent_alias].table
        via = child.unit_via
        return (via is not None and via.column == child_col and via.table == parent.name
                and via.references == parent_col and parent_col in parent.unique_columns
                and self.meta(child_ref).type == self.meta(parent_ref).type)

    def bounding_sources(self) -> list[str] | None:
        """R: the private sources no key link determines, when the links connect every
        private source and key links determine all the others; else None."""
        private = [s.alias for s in self.private_sources]
        links = self._links()
        reached = {parent for kind, _, parent in links if kind == "key"}
        bounding = [alias for alias in private if alias not in reached]
        # Determined sources: reached by a key link from R or from a determined source.
        known = set(bounding)
        growing = True
        while growing:
            growing = False
            for kind, child, parent in links:
                if kind == "key" and child in known and parent not in known:
                    known.add(parent)
                    growing = True
        if known != set(private):
            return None
        # Connected: every link (either kind) ties two sources to one unit.
        group = {alias: alias for alias in private}

        def root(alias: str) -> str:
            while group[alias] != alias:
                alias = group[alias]
            return alias

        for _, a, b in links:
            group[root(a)] = root(b)
        if len({root(alias) for alias in private}) != 1:
            return None
        return bounding

    def _public_joins_unique(self) -> bool:
        """Does every public source meet at most one of its rows per row of the rest?

        The public table must not come first (it has no ON of its own), and its own ON must
        have a bare top-level conjunct `public.u = other.c`, u unique in the public table's
        content, `other` a source joined before it, both columns of one declared type (no
        implicit cast could make two distinct public values equal one private value). Extra
        conjuncts only remove matches. By induction over the join order each row of the
        sources before it then meets at most one public row (LEFT: exactly one, or NULLs),
        so the rows of every unit are those of the private tables, never more.
        """
        if not self.sources[self.first].private:
            return False
        before = [self.first]
        for _, alias, condition in self.joins:
            source = self.sources[alias]
            if not source.private and not self._joined_on_unique(alias, condition, set(before)):
                return False
            before.append(alias)
        return True

    def _joined_on_unique(self, alias: str, condition: exp.Expression, before: set[str]) -> bool:
        unique = self.sources[alias].table.unique_columns
        for left, right in self.column_equalities(condition):
            for mine_ref, other_ref in ((left, right), (right, left)):
                mine_alias, mine_col = mine_ref.split(".", 1)
                if (mine_alias == alias and mine_col in unique
                        and other_ref.split(".", 1)[0] in before
                        and self.meta(mine_ref).type == self.meta(other_ref).type):
                    return True
        return False

    @property
    def truncated_at_query_time(self) -> list[Source]:
        """The sources read through a per-unit truncation (rewriter/truncation.py)."""
        return [s for s in self.sources.values() if s.table.truncated_at_query_time]

    @property
    def description(self) -> str:
        return " JOIN ".join(s.table.name for s in self.sources.values())

    def from_expression(self) -> exp.Expression:
        """FROM ... JOIN ... over quoted, dataset-qualified tables with their aliases."""
        select = exp.select("*").from_(self._table_node(self.first))
        for kind, alias, condition in self.joins:
            select = select.join(self._table_node(alias), on=condition.copy(), join_type=kind)
        return select

    def _table_node(self, alias: str) -> exp.Expression:
        source = self.sources[alias]
        node = exp.Table(this=exp.to_identifier(source.table.name, quoted=True),
                         db=exp.to_identifier(source.dataset.name, quoted=True),
                         alias=exp.TableAlias(this=exp.to_identifier(alias, quoted=True)))
        if source.table.truncated_at_query_time:
            # Every read of the table goes through the truncation, before joins and WHERE,
            # exactly like a table truncated at ingest (see rewriter/truncation.py).
            return truncated_read(source.table, node, alias, source.table.max_rows_per_unit)
        return node


def build_scope(select: exp.Select, resolve_table: TableResolver) -> QueryScope:
    from_ = select.args.get("from_")
    if from_ is None:
        raise UnsupportedQuery("the query must read a table (FROM ...)")
    sources: dict[str, Source] = {}
    first = _add_source(sources, from_.this, resolve_table)
    scope = QueryScope(sources=sources, first=first)
    pending: list[tuple[str, str, exp.Expression]] = []
    for join in select.args.get("joins") or []:
        alias = _add_source(sources, join.this, resolve_table)
        kind = _join_kind(join)
        condition = join.args.get("on")
        if join.args.get("using"):
            raise UnsupportedQuery("JOIN ... USING is not supported; write JOIN ... ON a.x = b.x")
        if condition is None:
            raise PolicyRefused("joins need an ON condition: a cross join pairs the rows of "
                                "different people and cannot be bounded")
        pending.append((kind, alias, condition))
    datasets = {s.dataset.name for s in sources.values()}
    if len(datasets) > 1:
        raise PolicyRefused("a query may read one dataset only (budgets are per dataset)")
    if not scope.private_sources:
        raise UnsupportedQuery("the query reads only public tables; public tables can only be "
                               "joined with private ones")
    for kind, alias, condition in pending:
        checked = check_row_expression(condition, scope, "JOIN ... ON")
        scope.joins.append((kind, alias, total_condition(checked, scope)))
        if kind == "LEFT" and sources[alias].private:
            raise UnsupportedQuery("LEFT JOIN is supported towards public tables only")
    scope.unit_ref = _unit_of(scope)
    return scope


def _add_source(sources: dict[str, Source], node: exp.Expression, resolve_table) -> str:
    if isinstance(node, exp.Subquery):
        raise UnsupportedQuery("subqueries in FROM are supported only when they select rows "
                               "(no aggregation, DISTINCT, LIMIT or window)")
    if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
        raise PolicyRefused("only dataset tables can be queried: table functions, files and "
                            "other sources are not allowed")
    dataset, table = resolve_table(node)
    alias = (node.alias or node.name).lower()
    if alias in sources:
        raise UnsupportedQuery(f"table alias '{alias}' is used twice; give each table its own alias")
    sources[alias] = Source(alias, dataset, table)
    return alias


def _join_kind(join: exp.Join) -> str:
    side = (join.side or "").upper()
    kind = (join.kind or "").upper()
    if kind in ("CROSS",) or join.args.get("method"):
        raise PolicyRefused("cross and natural joins are not allowed: they pair rows of "
                            "different people")
    if side in ("RIGHT", "FULL"):
        raise UnsupportedQuery(f"{side} JOIN is not supported; use INNER JOIN or LEFT JOIN")
    if kind in ("SEMI", "ANTI", "OUTER"):
        raise UnsupportedQuery(f"{kind} JOIN is not supported")
    return "LEFT" if side == "LEFT" else "INNER"


def _unit_of(scope: QueryScope) -> str:
    """The unit column all private sources share, or a clear refusal."""
    parent = {alias: alias for alias in scope.sources}

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for left, right in scope.inner_column_equalities():
        if _unit_link(scope, left, right) or _unit_link(scope, right, left):
            parent[find(left.split(".")[0])] = find(right.split(".")[0])
    private = scope.private_sources
    roots = {find(s.alias) for s in private}
    if len(roots) > 1:
        raise PolicyRefused("private tables must be joined on their privacy unit (e.g. ON "
                            "a.patient_id = b.patient_id) or along their declared foreign key; "
                            "any other join could mix rows of different people")
    direct = [s for s in private if s.table.privacy_unit]
    if not direct:
        via = private[0].table.unit_via
        raise PolicyRefused(f"table '{private[0].table.name}' reaches its privacy unit through "
                            f"'{via.table}': join it ON {private[0].alias}.{via.column} = "
                            f"{via.table}.{via.references}")
    return f"{direct[0].alias}.{direct[0].table.privacy_unit}"


def _unit_link(scope: QueryScope, child_ref: str, parent_ref: str) -> bool:
    """child = parent links two sources to one unit: unit = unit, or the FK path."""
    child_alias, child_col = child_ref.split(".", 1)
    parent_alias, parent_col = parent_ref.split(".", 1)
    child, parent = scope.sources[child_alias].table, scope.sources[parent_alias].table
    if child.public or parent.public:
        return False
    if child.privacy_unit == child_col and parent.privacy_unit == parent_col:
        return True
    via = child.unit_via
    return (via is not None and via.column == child_col and via.table == parent.name
            and via.references == parent_col)

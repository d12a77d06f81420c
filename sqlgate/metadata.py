"""Dataset privacy metadata: the owner's declarations that make DP possible.

Every bound used by the rewriter comes from here, never from the data (privacy rule 1).
The YAML format is documented in README.md ("Metadata reference"); `parse_dataset`
validates a mapping and names the offending field in every error.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from sqlgate.errors import MetadataError

COLUMN_TYPES = ("int", "float", "string", "bool", "date")
# Types whose `=` is plain value identity in every engine, as COUNT(DISTINCT) counts it, so
# "distinct values" means "each row joins at most one row". Floats are left out: -0.0 = 0.0
# and NaN handling make the two differ.
KEY_TYPES = ("int", "string", "date", "bool")
MECHANISMS = ("laplace", "gaussian")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Budget:
    """A privacy budget stated as (epsilon, delta)."""

    epsilon: float
    delta: float = 0.0


@dataclass(frozen=True)
class ColumnMeta:
    name: str
    type: str
    lower: float | None = None
    upper: float | None = None
    public_keys: tuple | None = None
    nullable: bool = True
    unique: bool = False
    """Declared by the owner on a table's privacy_unit column: one row per unit (a primary
    key). The loader refuses data that repeats a value (`enforced_key_columns`), so the
    table needs no per-unit truncation: each unit has at most one row, from metadata."""

    @property
    def is_numeric(self) -> bool:
        return self.type in ("int", "float")

    @property
    def has_bounds(self) -> bool:
        return self.lower is not None and self.upper is not None


@dataclass(frozen=True)
class ForeignUnit:
    """The privacy unit reached through a foreign key: this table's `column`
    references `table`.`references`, whose row carries the unit."""

    column: str
    table: str
    references: str


@dataclass(frozen=True)
class StoredSum:
    """How the DuckDB catalog encoded a hidden per-row column beside a bounded column: the
    integer the planner's fixed-point sum measure adds for that row (rewriter/planner.py
    `sum_encoding` / `fixed_point_sum`) with these parameters. Set by the loader only; the
    planner reads the hidden column only while its own parameters are still these."""

    lower: float
    upper: float
    bits: int
    nullable: bool


def stored_sum_column(column: str, encoding: StoredSum) -> str:
    """The hidden column holding `column`'s sums in `encoding`. `$` is not legal in a
    declared name (`_identifier`), so it never collides with a declared column (and analyst
    SQL resolves names against the declared columns only). The encoding is part of the name,
    so the table itself says how its column was computed: a catalog file that does not match
    the stored tables (a crash between the two writes) names a column that is not there."""
    flag = "n" if encoding.nullable else "z"
    return f"__fx${column}${encoding.lower!r}${encoding.upper!r}${encoding.bits}${flag}"


@dataclass(frozen=True)
class TableMeta:
    name: str
    columns: Mapping[str, ColumnMeta]
    privacy_unit: str | None = None
    unit_via: ForeignUnit | None = None
    public: bool = False
    source: str | None = None
    max_groups_per_unit: int = 1
    max_rows_per_group: int = 1
    truncate_rows_per_unit: int | None = None
    max_rows_per_unit: int | None = None
    """Query-time bound: each unit contributes at most this many rows of the table to any
    query; the planner reads the table through a per-unit truncation (rewriter/truncation.py)."""
    unique_columns: frozenset[str] = frozenset()
    """Columns whose non-NULL values are all distinct in the stored data, set by the loader
    only (an unchecked declaration would break the sensitivity argument of joins, see
    rewriter/scope.py). Not part of the YAML form. Two sources, never anything else:
    - public tables: read from the table's (public) content at load time;
    - private tables: only the columns of `enforced_key_columns` (the `references` column of
      a `unit_via`, a privacy_unit declared `unique`). The loader refuses the dataset unless
      they are distinct, so the fact follows from the metadata and a successful load; it is
      never read from private data to choose a plan."""
    stored_sums: Mapping[str, StoredSum] = field(default_factory=dict)
    """Private bounded numeric columns (by name) whose fixed-point sum value the DuckDB
    catalog stored per row in a hidden BIGINT column (`stored_sum_column`), with the
    encoding used. Set by the loader only, never from YAML; absent on other engines."""
    stored_rank: str | None = None
    """The hidden column in which the DuckDB catalog stored each row's position within its
    unit by the query-time truncation rule (rewriter/truncation.py `stored_rank_column`,
    sqlgate/stored_rank.py), for tables truncated at query time. Set by the loader only,
    never from YAML; absent on other engines and in federated plans."""

    def column(self, name: str) -> ColumnMeta | None:
        return self.columns.get(name.lower())

    @property
    def rows_per_unit(self) -> int | None:
        """The most rows one unit has in this table as queries read it: the smaller of the
        ingest truncation and the query-time bound (None: no such bound). A `unit_via` table
        counts its rows per unit of the parent row each joins (its ingest truncation)."""
        if self.unit_via is not None and not self.public:
            return self.truncate_rows_per_unit
        if not self.privacy_unit:
            return None
        if self.unit_is_key:
            return 1
        bounds = [b for b in (self.truncate_rows_per_unit, self.max_rows_per_unit) if b]
        return min(bounds) if bounds else None

    @property
    def unit_is_key(self) -> bool:
        """The privacy unit is declared unique: one row per unit, enforced at load."""
        unit = self.columns.get(self.privacy_unit) if self.privacy_unit else None
        return bool(unit is not None and unit.unique)

    @property
    def truncated_at_query_time(self) -> bool:
        """Whether queries must truncate the table themselves: the query-time bound is
        tighter than what ingest already enforced (or there was no ingest truncation)."""
        return (self.privacy_unit is not None and self.max_rows_per_unit is not None
                and not self.unit_is_key
                and (self.truncate_rows_per_unit is None
                     or self.max_rows_per_unit < self.truncate_rows_per_unit))


@dataclass(frozen=True)
class DatasetMeta:
    name: str
    tables: Mapping[str, TableMeta]
    default_budget: Budget
    analyst_budgets: Mapping[str, Budget] = field(default_factory=dict)
    query_epsilon: float = 0.5
    query_delta: float = 1e-7
    mechanism: str = "laplace"
    max_public_cells: int = 100_000
    description: str = ""
    stored_sums: bool = True
    """Whether the DuckDB catalog stores each bounded column's clamped fixed-point sum value
    per row at load (sqlgate/stored_sums.py): faster sums for one BIGINT per bounded column
    of memory. `stored_sums: false` in YAML trades that memory back for per-row clamping."""

    def table(self, name: str) -> TableMeta | None:
        return self.tables.get(name.lower())

    def budget_for(self, analyst: str) -> Budget:
        return self.analyst_budgets.get(analyst, self.default_budget)


def load_dataset_yaml(path: str | Path) -> DatasetMeta:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise MetadataError("<file>", f"not valid YAML ({exc.__class__.__name__})") from None
    meta = parse_dataset(raw)
    # Relative sources are relative to the metadata file, as owners expect.
    tables = {}
    for name, table in meta.tables.items():
        source = table.source
        if source and not Path(source).is_absolute():
            source = str((path.parent / source).resolve())
        tables[name] = _replace(table, source=source)
    return _replace(meta, tables=tables)


def parse_dataset_text(text: str) -> DatasetMeta:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MetadataError("<document>", f"not valid YAML ({exc.__class__.__name__})") from None
    return parse_dataset(raw)


def parse_dataset(raw: Any) -> DatasetMeta:
    if not isinstance(raw, Mapping):
        raise MetadataError("<document>", "must be a mapping with 'dataset' and 'tables'")
    _reject_unknown(raw, "", {"dataset", "description", "budget", "analyst_budgets", "query",
                              "tables", "max_public_cells", "stored_sums"})
    name = _identifier(raw.get("dataset"), "dataset")
    default_budget = _budget(raw.get("budget", {"epsilon": 1.0, "delta": 1e-6}), "budget")
    analyst_budgets = {}
    for analyst, spec in (_mapping(raw.get("analyst_budgets", {}), "analyst_budgets")).items():
        analyst_budgets[str(analyst)] = _budget(spec, f"analyst_budgets.{analyst}")
    query = _mapping(raw.get("query", {}), "query")
    _reject_unknown(query, "query", {"epsilon", "delta", "mechanism"})
    query_epsilon = _positive(query.get("epsilon", 0.5), "query.epsilon")
    query_delta = _probability(query.get("delta", 1e-7), "query.delta")
    mechanism = query.get("mechanism", "laplace")
    if mechanism not in MECHANISMS:
        raise MetadataError("query.mechanism", f"must be one of {', '.join(MECHANISMS)}")
    max_cells = _positive_int(raw.get("max_public_cells", 100_000), "max_public_cells")

    tables_raw = _mapping(raw.get("tables"), "tables")
    if not tables_raw:
        raise MetadataError("tables", "at least one table is required")
    tables = {}
    for table_name, spec in tables_raw.items():
        table = _table(str(table_name), spec)
        tables[table.name] = table
    _check_units(tables)
    return DatasetMeta(
        name=name, tables=tables, default_budget=default_budget,
        analyst_budgets=analyst_budgets, query_epsilon=query_epsilon,
        query_delta=query_delta, mechanism=mechanism, max_public_cells=max_cells,
        description=str(raw.get("description", "")),
        stored_sums=_bool(raw.get("stored_sums", True), "stored_sums"),
    )


def _table(name: str, spec: Any) -> TableMeta:
    where = f"tables.{name}"
    _identifier(name, where)
    spec = _mapping(spec, where)
    _reject_unknown(spec, where, {"source", "privacy_unit", "unit_via", "public", "columns",
                                  "max_groups_per_unit", "max_rows_per_group",
                                  "truncate_rows_per_unit", "max_rows_per_unit"})
    columns_raw = _mapping(spec.get("columns"), f"{where}.columns")
    if not columns_raw:
        raise MetadataError(f"{where}.columns", "at least one column is required")
    columns = {}
    for col_name, col_spec in columns_raw.items():
        col = _column(str(col_name), col_spec, f"{where}.columns.{col_name}")
        columns[col.name] = col
    public = _bool(spec.get("public", False), f"{where}.public")
    unit = spec.get("privacy_unit")
    unit_via = None
    if spec.get("unit_via") is not None:
        via = _mapping(spec["unit_via"], f"{where}.unit_via")
        _reject_unknown(via, f"{where}.unit_via", {"column", "table", "references"})
        unit_via = ForeignUnit(
            column=_identifier(via.get("column"), f"{where}.unit_via.column").lower(),
            table=_identifier(via.get("table"), f"{where}.unit_via.table").lower(),
            references=_identifier(via.get("references"), f"{where}.unit_via.references").lower(),
        )
        if unit_via.column not in columns:
            raise MetadataError(f"{where}.unit_via.column", f"'{unit_via.column}' is not a declared column")
    if unit is not None:
        unit = _identifier(unit, f"{where}.privacy_unit").lower()
        if unit not in columns:
            raise MetadataError(f"{where}.privacy_unit", f"'{unit}' is not a declared column")
    if public and (unit or unit_via):
        raise MetadataError(f"{where}.public", "a public table has no privacy unit")
    if not public and not unit and not unit_via:
        raise MetadataError(f"{where}.privacy_unit",
                            "required for a private table (or declare unit_via, or public: true)")
    if unit and unit_via:
        raise MetadataError(f"{where}.unit_via", "declare either privacy_unit or unit_via, not both")
    for col in columns.values():
        if col.unique and col.name != unit:
            # Elsewhere a declared key has no use the planner could rely on, and a silent
            # no-op declaration would only mislead.
            raise MetadataError(f"{where}.columns.{col.name}.unique",
                                "only the table's privacy_unit column can be declared unique "
                                "(one row per unit, checked at load)")
        if col.unique and col.type not in KEY_TYPES:
            raise MetadataError(f"{where}.columns.{col.name}.unique",
                                f"a unique privacy unit must be of type {', '.join(KEY_TYPES)} "
                                f"(it is {col.type})")
    truncate = spec.get("truncate_rows_per_unit")
    if truncate is not None:
        truncate = _positive_int(truncate, f"{where}.truncate_rows_per_unit")
    max_rows = spec.get("max_rows_per_unit")
    if max_rows is not None:
        max_rows = _positive_int(max_rows, f"{where}.max_rows_per_unit")
        if public:
            raise MetadataError(f"{where}.max_rows_per_unit", "a public table has no privacy unit "
                                "to bound rows for")
        if unit_via is not None:
            # The unit is only known after joining the parent table, so the table cannot be
            # truncated per unit on its own; its rows stay bounded per group (L0 x Linf).
            raise MetadataError(f"{where}.max_rows_per_unit",
                                f"not supported on a table that reaches its unit through "
                                f"unit_via; declare it on '{unit_via.table}' (the table holding "
                                "the unit) and bound this table with max_groups_per_unit and "
                                "max_rows_per_group")
    source = spec.get("source")
    if source is not None and not isinstance(source, str):
        raise MetadataError(f"{where}.source", "must be a path to a CSV or Parquet file")
    return TableMeta(
        name=name.lower(), columns=columns, privacy_unit=unit, unit_via=unit_via, public=public,
        source=source,
        max_groups_per_unit=_positive_int(spec.get("max_groups_per_unit", 1), f"{where}.max_groups_per_unit"),
        max_rows_per_group=_positive_int(spec.get("max_rows_per_group", 1), f"{where}.max_rows_per_group"),
        truncate_rows_per_unit=truncate, max_rows_per_unit=max_rows,
    )


def _column(name: str, spec: Any, where: str) -> ColumnMeta:
    _identifier(name, where)
    if isinstance(spec, str):
        spec = {"type": spec}
    spec = _mapping(spec, where)
    _reject_unknown(spec, where, {"type", "lower", "upper", "public_keys", "nullable", "bounds",
                                  "unique"})
    col_type = spec.get("type")
    if col_type not in COLUMN_TYPES:
        raise MetadataError(f"{where}.type", f"must be one of {', '.join(COLUMN_TYPES)}")
    lower, upper = spec.get("lower"), spec.get("upper")
    if spec.get("bounds") is not None:
        bounds = spec["bounds"]
        if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
            raise MetadataError(f"{where}.bounds", "must be [lower, upper]")
        lower, upper = bounds
    if (lower is None) != (upper is None):
        raise MetadataError(f"{where}.{'upper' if upper is None else 'lower'}",
                            "lower and upper bounds are declared together")
    if lower is not None:
        if col_type not in ("int", "float"):
            raise MetadataError(f"{where}.lower", "bounds apply to int and float columns only")
        lower = _finite(lower, f"{where}.lower")
        upper = _finite(upper, f"{where}.upper")
        if lower > upper:
            raise MetadataError(f"{where}.upper", "must be >= lower")
    keys = spec.get("public_keys")
    if keys is not None:
        if not isinstance(keys, (list, tuple)) or not keys:
            raise MetadataError(f"{where}.public_keys", "must be a non-empty list of values")
        if len(set(map(repr, keys))) != len(keys):
            raise MetadataError(f"{where}.public_keys", "values must be distinct")
        keys = tuple(_coerce_key(k, col_type, f"{where}.public_keys") for k in keys)
    return ColumnMeta(name=name.lower(), type=col_type, lower=lower, upper=upper,
                      public_keys=keys,
                      nullable=_bool(spec.get("nullable", True), f"{where}.nullable"),
                      unique=_bool(spec.get("unique", False), f"{where}.unique"))


def _coerce_key(value: Any, col_type: str, where: str):
    if col_type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise MetadataError(where, "keys of an int column must be integers")
        return value
    if col_type == "bool":
        if not isinstance(value, bool):
            raise MetadataError(where, "keys of a bool column must be true/false")
        return value
    if col_type == "float":
        raise MetadataError(where, "float columns cannot have public keys; bin them instead")
    return str(value)


def _check_units(tables: Mapping[str, TableMeta]) -> None:
    for table in tables.values():
        via = table.unit_via
        if via is None:
            continue
        target = tables.get(via.table)
        where = f"tables.{table.name}.unit_via"
        if target is None:
            raise MetadataError(f"{where}.table", f"'{via.table}' is not a table of this dataset")
        if via.references not in target.columns:
            raise MetadataError(f"{where}.references", f"'{via.references}' is not a column of {via.table}")
        if target.privacy_unit is None:
            raise MetadataError(f"{where}.table", f"'{via.table}' must declare privacy_unit itself")
        if table.truncate_rows_per_unit is not None:
            # Truncating per unit through the parent needs each child row to join at most one
            # parent row (the loader enforces distinct values; see enforced_key_columns), and
            # that only holds when `=` is identity and no implicit cast is involved.
            child_type = table.columns[via.column].type
            parent_type = target.columns[via.references].type
            if parent_type not in KEY_TYPES:
                raise MetadataError(
                    f"tables.{table.name}.truncate_rows_per_unit",
                    f"truncating through unit_via needs {via.table}.{via.references} to be a key "
                    f"of type {', '.join(KEY_TYPES)} (it is {parent_type})")
            if child_type != parent_type:
                raise MetadataError(
                    f"tables.{table.name}.truncate_rows_per_unit",
                    f"truncating through unit_via needs {table.name}.{via.column} ({child_type}) "
                    f"and {via.table}.{via.references} ({parent_type}) to have the same type")


def enforced_key_columns(meta: DatasetMeta) -> dict[str, frozenset[str]]:
    """Private columns the loader must prove distinct (by table name):
    - the parent's `references` column of every `unit_via` table. A child row joining two
      parent rows of two people would belong to both, so removing one person would also
      change the other's rows: every per-person bound on the join assumes each child row
      reaches one parent row;
    - a privacy_unit column declared `unique` (one row per unit, `TableMeta.unit_is_key`):
      the planner then bounds the table's rows per unit by 1 without truncating it."""
    keys: dict[str, set[str]] = {}
    for table in meta.tables.values():
        if table.unit_is_key:
            keys.setdefault(table.name, set()).add(table.privacy_unit)
        via = table.unit_via
        if via is not None:
            keys.setdefault(via.table, set()).add(via.references)
    return {name: frozenset(cols) for name, cols in keys.items()}


def load_order(meta: DatasetMeta) -> list[TableMeta]:
    """The tables parents first: a `unit_via` table is truncated against its loaded parent
    (a parent always has its own privacy_unit, so one level is all there is)."""
    tables = list(meta.tables.values())
    return [t for t in tables if t.unit_via is None] + [t for t in tables if t.unit_via is not None]


def _replace(obj, **changes):
    from dataclasses import replace
    return replace(obj, **changes)


def _reject_unknown(spec: Mapping, where: str, allowed: set[str]) -> None:
    for key in spec:
        if key not in allowed:
            name = f"{where}.{key}" if where else str(key)
            raise MetadataError(name, f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _mapping(value: Any, where: str) -> Mapping:
    if value is None:
        raise MetadataError(where, "is required")
    if not isinstance(value, Mapping):
        raise MetadataError(where, "must be a mapping")
    return value


def _identifier(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise MetadataError(where, "must be an identifier (letters, digits, underscore)")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise MetadataError(where, "must be true or false")
    return value


def _finite(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MetadataError(where, "must be a finite number")
    return value


def _positive(value: Any, where: str) -> float:
    value = _finite(value, where)
    if value <= 0:
        raise MetadataError(where, "must be > 0")
    return float(value)


def _probability(value: Any, where: str) -> float:
    value = _finite(value, where)
    if not 0 <= value < 1:
        raise MetadataError(where, "must be in [0, 1)")
    return float(value)


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MetadataError(where, "must be a positive integer")
    return value


def _budget(spec: Any, where: str) -> Budget:
    spec = _mapping(spec, where)
    _reject_unknown(spec, where, {"epsilon", "delta"})
    if "epsilon" not in spec:
        raise MetadataError(f"{where}.epsilon", "is required")
    return Budget(epsilon=_positive(spec["epsilon"], f"{where}.epsilon"),
                  delta=_probability(spec.get("delta", 0.0), f"{where}.delta"))


def dataset_to_dict(meta: DatasetMeta) -> dict:
    """The YAML/JSON form of a dataset's metadata (round-trips through parse_dataset)."""
    tables = {}
    for table in meta.tables.values():
        columns = {}
        for col in table.columns.values():
            spec: dict[str, Any] = {"type": col.type}
            if col.has_bounds:
                spec["lower"], spec["upper"] = col.lower, col.upper
            if col.public_keys is not None:
                spec["public_keys"] = list(col.public_keys)
            if not col.nullable:
                spec["nullable"] = False
            if col.unique:
                spec["unique"] = True
            columns[col.name] = spec
        body: dict[str, Any] = {"columns": columns}
        if table.source:
            body["source"] = table.source
        if table.public:
            body["public"] = True
        if table.privacy_unit:
            body["privacy_unit"] = table.privacy_unit
        if table.unit_via:
            body["unit_via"] = {"column": table.unit_via.column, "table": table.unit_via.table,
                                "references": table.unit_via.references}
        if not table.public:
            body["max_groups_per_unit"] = table.max_groups_per_unit
            body["max_rows_per_group"] = table.max_rows_per_group
        if table.truncate_rows_per_unit is not None:
            body["truncate_rows_per_unit"] = table.truncate_rows_per_unit
        if table.max_rows_per_unit is not None:
            body["max_rows_per_unit"] = table.max_rows_per_unit
        tables[table.name] = body
    return {
        "dataset": meta.name,
        "description": meta.description,
        "budget": {"epsilon": meta.default_budget.epsilon, "delta": meta.default_budget.delta},
        "analyst_budgets": {a: {"epsilon": b.epsilon, "delta": b.delta}
                            for a, b in meta.analyst_budgets.items()},
        "query": {"epsilon": meta.query_epsilon, "delta": meta.query_delta,
                  "mechanism": meta.mechanism},
        "max_public_cells": meta.max_public_cells,
        **({} if meta.stored_sums else {"stored_sums": False}),
        "tables": tables,
    }

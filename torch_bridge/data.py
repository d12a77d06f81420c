"""Select training data inside the domain and encode it from metadata alone.

The SQL of a training job must be a plain projection of one private table:

    SELECT col, col, ..., label FROM [dataset.]table [WHERE predicate]

Plain columns only (no expressions, aliases, joins, aggregates, DISTINCT, LIMIT), because the
job needs to know exactly which declared column each feature is, and because it adds the
table's privacy-unit column itself (an analyst could otherwise alias another column as the
unit and split one person into many "units"). The query runs through
`Gateway.run_exact` (sandboxed engine, rows never leave the process).

Encoding uses METADATA only, never statistics of the data (privacy rule 1):
* int/float with declared bounds: clamp to [lower, upper], scale to [0, 1]; NULL -> 0;
* bool: 1/0; NULL -> 0;
* columns with public keys (and no bounds): one-hot over the declared key set; NULL or a
  value outside the set -> all zeros;
* anything else (no bounds, no keys, dates, the privacy unit) is refused before any data is
  read.

Privacy unit. Rows are grouped per unit and each unit keeps at most k rows (k from the
spec, else `truncate_rows_per_unit`, else max_groups_per_unit * max_rows_per_group of the
table, capped at 64). The cap only bounds compute (rows are padded to k with a mask): the
sensitivity is bounded by clipping each unit's *summed* gradient in DP-SGD, whatever k is.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlglot import exp

from rewriter.parse import parse_select
from sqlgate.errors import DataLoadError, PolicyRefused
from sqlgate.metadata import ColumnMeta, DatasetMeta, TableMeta
from torch_bridge.spec import MAX_ROWS_PER_UNIT, SpecError, TrainingSpec

MAX_TRAINING_ROWS = 2_000_000
UNIT_ALIAS = "__sqlgate_unit"
MAX_CLASSES = 1_000


@dataclass(frozen=True)
class FeatureColumn:
    """How one selected column becomes model inputs (public: from metadata)."""

    name: str
    kind: str  # numeric | bool | onehot
    lower: float | None = None
    upper: float | None = None
    keys: tuple = ()

    @property
    def width(self) -> int:
        return len(self.keys) if self.kind == "onehot" else 1

    def names(self) -> list[str]:
        if self.kind == "onehot":
            return [f"{self.name}={k}" for k in self.keys]
        return [self.name]

    def to_dict(self) -> dict:
        body = {"name": self.name, "kind": self.kind}
        if self.kind == "numeric":
            body.update(lower=self.lower, upper=self.upper)
        if self.kind == "onehot":
            body["keys"] = [k if isinstance(k, (int, float, bool)) else str(k) for k in self.keys]
        return body


@dataclass(frozen=True)
class LabelColumn:
    name: str
    task: str
    classes: tuple = ()          # binary/multiclass: class values, index = target
    lower: float | None = None   # regression: the label is scaled to [0, 1] with these
    upper: float | None = None

    @property
    def outputs(self) -> int:
        return len(self.classes) if self.task == "multiclass" else 1

    def to_dict(self) -> dict:
        body = {"name": self.name, "task": self.task}
        if self.classes:
            body["classes"] = [c if isinstance(c, (int, float, bool)) else str(c)
                               for c in self.classes]
        if self.task == "regression":
            body.update(lower=self.lower, upper=self.upper)
        return body


@dataclass(frozen=True)
class TrainingQuery:
    """The validated plan of a training job's data selection (no data in it)."""

    dataset: str
    table: TableMeta
    features: tuple[FeatureColumn, ...]
    label: LabelColumn
    rows_per_unit: int
    engine_sql: str

    @property
    def input_width(self) -> int:
        return sum(f.width for f in self.features)

    def layout(self) -> dict:
        """Public description of inputs/outputs, shipped with the weights."""
        return {"features": [f.to_dict() for f in self.features],
                "inputs": [n for f in self.features for n in f.names()],
                "label": self.label.to_dict(), "rows_per_unit": self.rows_per_unit,
                "table": f"{self.dataset}.{self.table.name}"}


@dataclass
class UnitData:
    """Per-unit training tensors: x [U, k, F], y [U, k], mask [U, k] (1 = real row)."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray

    @property
    def units(self) -> int:
        return int(self.x.shape[0])


def plan_training_query(meta: DatasetMeta, spec: TrainingSpec) -> TrainingQuery:
    """Validate the SQL against metadata and build the engine query. Reads no data."""
    select = parse_select(spec.sql)
    for arg in ("joins", "group", "having", "order", "limit", "offset", "distinct", "with",
                "with_", "qualify", "windows", "laterals"):
        if select.args.get(arg):
            raise PolicyRefused(f"training SQL must be SELECT columns FROM one table [WHERE ...]; "
                                f"'{arg.rstrip('_').upper()}' is not allowed")
    source = select.args.get("from_") or select.args.get("from")
    table_node = source.this if source is not None else None
    if not isinstance(table_node, exp.Table) or not isinstance(table_node.this, exp.Identifier):
        raise PolicyRefused("training SQL must read exactly one table of the dataset")
    if table_node.db and table_node.db.lower() != meta.name.lower():
        raise PolicyRefused(f"the training request covers dataset '{meta.name}' only")
    table = meta.table(table_node.name)
    if table is None:
        raise SpecError("sql", f"table '{table_node.name}' is not in dataset '{meta.name}'")
    if table.public or not table.privacy_unit:
        raise PolicyRefused(f"training needs a private table with its own privacy_unit column; "
                            f"'{table.name}' has none (tables with unit_via are not supported)")
    where = select.args.get("where")
    if where is not None:
        for node in where.walk():
            if isinstance(node, (exp.Select, exp.Subquery, exp.Table)):
                raise PolicyRefused("subqueries are not allowed in a training job's WHERE")
    names: list[str] = []
    for projection in select.expressions:
        if not isinstance(projection, exp.Column) or not isinstance(projection.this, exp.Identifier):
            raise PolicyRefused("training SQL selects plain columns only (no *, expressions or "
                                "aliases); feature encoding comes from each column's metadata")
        name = projection.name.lower()
        if table.column(name) is None:
            raise SpecError("sql", f"column '{name}' is not declared in table '{table.name}'")
        if name in names:
            raise SpecError("sql", f"column '{name}' is selected twice")
        names.append(name)
    if spec.label not in names:
        raise SpecError("label", f"'{spec.label}' is not one of the selected columns")
    if len(names) < 2:
        raise SpecError("sql", "select at least one feature column besides the label")
    features = tuple(_feature(table, table.column(n)) for n in names if n != spec.label)
    label = _label(table.column(spec.label), spec.task)
    k = spec.max_rows_per_unit or min(
        MAX_ROWS_PER_UNIT,
        table.rows_per_unit or table.max_groups_per_unit * table.max_rows_per_group)
    columns = [exp.column(table.privacy_unit, quoted=True).as_(UNIT_ALIAS)]
    columns += [exp.column(n, quoted=True) for n in names]
    query = exp.select(*columns).from_(exp.Table(this=exp.to_identifier(table.name, quoted=True),
                                                 db=exp.to_identifier(meta.name, quoted=True)))
    if where is not None:
        query = query.where(where.this.copy())
    return TrainingQuery(meta.name, table, features, label, k, query.sql(dialect="duckdb"))


def select_units(gateway, plan: TrainingQuery) -> UnitData:
    """Run the approved selection in the domain and encode it per unit."""
    result = gateway.run_exact(plan.engine_sql, plan.dataset, row_limit=MAX_TRAINING_ROWS)
    if result.truncated:
        raise DataLoadError(f"the training selection has more than {MAX_TRAINING_ROWS} rows; "
                            f"narrow it with WHERE")
    columns = [c.lower() for c in result.columns]
    rows = result.rows
    return encode_units(plan, columns, rows)


def encode_units(plan: TrainingQuery, columns: list[str], rows: list[tuple]) -> UnitData:
    index = {name: i for i, name in enumerate(columns)}
    units = [row[index[UNIT_ALIAS]] for row in rows]
    blocks = [_encode_feature(f, [row[index[f.name]] for row in rows]) for f in plan.features]
    x_rows = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(rows), 0), np.float32)
    y_rows, keep = _encode_label(plan.label, [row[index[plan.label.name]] for row in rows])
    # Group rows per unit (order of first appearance), keep at most k rows each.
    slot: dict = {}
    unit_of_row = np.empty(len(rows), dtype=np.int64)
    position = np.empty(len(rows), dtype=np.int64)
    counts: list[int] = []
    for r, unit in enumerate(units):
        if unit is None:
            raise DataLoadError("the privacy unit column contains NULL; the dataset is invalid")
        u = slot.get(unit)
        if u is None:
            u = slot[unit] = len(counts)
            counts.append(0)
        unit_of_row[r] = u
        position[r] = counts[u]
        if keep[r]:
            counts[u] += 1
    k = plan.rows_per_unit
    n_units = len(counts)
    x = np.zeros((n_units, k, x_rows.shape[1]), dtype=np.float32)
    y = np.zeros((n_units, k), dtype=np.float32)
    mask = np.zeros((n_units, k), dtype=np.float32)
    take = keep & (position < k)
    x[unit_of_row[take], position[take]] = x_rows[take]
    y[unit_of_row[take], position[take]] = y_rows[take]
    mask[unit_of_row[take], position[take]] = 1.0
    # Units whose rows all had an unusable label stay as all-masked: they contribute zero
    # gradient, exactly like an absent unit would after clipping.
    return UnitData(x=x, y=y, mask=mask)


# ---------------------------------------------------------------------- encoding


def _feature(table: TableMeta, col: ColumnMeta) -> FeatureColumn:
    if col.name == table.privacy_unit:
        raise PolicyRefused(f"the privacy unit '{col.name}' cannot be a feature")
    if col.is_numeric and col.has_bounds:
        return FeatureColumn(col.name, "numeric", float(col.lower), float(col.upper))
    if col.type == "bool":
        return FeatureColumn(col.name, "bool")
    if col.public_keys is not None:
        return FeatureColumn(col.name, "onehot", keys=tuple(col.public_keys))
    raise SpecError("sql", f"feature '{col.name}' has neither declared bounds nor public keys; "
                           f"the owner must declare them in the metadata")


def _label(col: ColumnMeta, task: str) -> LabelColumn:
    if task == "regression":
        if not (col.is_numeric and col.has_bounds):
            raise SpecError("label", f"a regression label needs declared bounds; "
                                     f"'{col.name}' has none")
        return LabelColumn(col.name, task, lower=float(col.lower), upper=float(col.upper))
    if col.type == "bool":
        classes: tuple = (False, True)
    elif col.public_keys is not None:
        classes = tuple(col.public_keys)
    elif col.type == "int" and col.has_bounds and col.upper - col.lower < MAX_CLASSES:
        classes = tuple(range(int(np.ceil(col.lower)), int(np.floor(col.upper)) + 1))
    else:
        raise SpecError("label", f"a classification label needs public keys (or a small "
                                 f"declared int range); '{col.name}' has neither")
    if task == "binary" and len(classes) != 2:
        raise SpecError("label", f"a binary label needs exactly 2 classes; '{col.name}' "
                                 f"declares {len(classes)} (use task 'multiclass')")
    if task == "multiclass" and not 2 <= len(classes) <= MAX_CLASSES:
        raise SpecError("label", f"a multiclass label needs 2 to {MAX_CLASSES} classes")
    return LabelColumn(col.name, task, classes=classes)


def _encode_feature(f: FeatureColumn, values: list) -> np.ndarray:
    n = len(values)
    if f.kind == "numeric":
        arr = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
        span = f.upper - f.lower
        scaled = (np.clip(arr, f.lower, f.upper) - f.lower) / span if span > 0 else arr * 0.0
        return np.nan_to_num(scaled, nan=0.0).astype(np.float32).reshape(n, 1)
    if f.kind == "bool":
        return np.array([1.0 if v is True else 0.0 for v in values], np.float32).reshape(n, 1)
    lookup = {_key(k): i for i, k in enumerate(f.keys)}
    out = np.zeros((n, len(f.keys)), dtype=np.float32)
    for r, v in enumerate(values):
        i = lookup.get(_key(v))
        if i is not None:
            out[r, i] = 1.0
    return out


def _encode_label(label: LabelColumn, values: list) -> tuple[np.ndarray, np.ndarray]:
    """Targets and which rows have a usable label (NULL / unknown class rows are skipped)."""
    n = len(values)
    y = np.zeros(n, dtype=np.float32)
    keep = np.zeros(n, dtype=bool)
    if label.task == "regression":
        span = label.upper - label.lower
        for r, v in enumerate(values):
            if v is None:
                continue
            clamped = min(max(float(v), label.lower), label.upper)
            y[r] = (clamped - label.lower) / span if span > 0 else 0.0
            keep[r] = True
        return y, keep
    lookup = {_key(c): i for i, c in enumerate(label.classes)}
    for r, v in enumerate(values):
        i = lookup.get(_key(v))
        if i is not None:
            y[r] = i
            keep[r] = True
    return y, keep


def _key(value):
    """Compare keys across Python/engine types (numpy ints, bools, strings) by value."""
    if isinstance(value, (bool, np.bool_)):
        return ("b", bool(value))
    if isinstance(value, (int, np.integer)):
        return ("n", int(value))
    if isinstance(value, (float, np.floating)):
        return ("n", int(value)) if float(value).is_integer() else ("f", float(value))
    return ("s", str(value))

"""Typed DP plans: what the rewriter hands to the executor and the release step.

A plan never holds data. It holds the bounded SQL to run, one `Measure` per noisy column
of that SQL (with the sensitivity the SQL guarantees), how group keys are released, and
the post-processing that turns noisy measures into the analyst's columns.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sqlglot import exp


@dataclass(frozen=True)
class Sensitivity:
    """How much one privacy unit can move a measured vector, in integer units.

    l0: groups a unit can touch; linf: most it can move one group; l1/l2: whole-vector norms.
    """

    l0: int
    linf: int
    l1: int
    l2: float


@dataclass(frozen=True)
class Measure:
    """One noisy column: a sum of bounded per-unit integer contributions per group."""

    name: str
    kind: str  # "count" | "count_col" | "units" | "sum" | "sum_sq"
    column: str | None
    fixed_point_bits: int
    sensitivity: Sensitivity
    lower: float | None = None
    upper: float | None = None

    @property
    def scale_factor(self) -> int:
        return 1 << self.fixed_point_bits


@dataclass(frozen=True)
class QuantileMeasure:
    """A quantile released by OpenDP's exponential-mechanism scorer over fixed candidates."""

    name: str
    column: str
    alpha: float
    lower: float
    upper: float
    candidates: tuple[float, ...]
    groups_per_unit: int
    rows_per_unit: int
    """Rows one unit can add to a group's value vector (the symmetric distance d_in)."""


@dataclass(frozen=True)
class KeyRelease:
    """How the group keys of the answer are chosen.

    none: no GROUP BY, one cell. public: the declared key sets (cross product; absent keys
    get noisy zeros). threshold: keys found in the data, kept only if their noisy count
    passes an OpenDP threshold (costs delta).
    """

    mode: str
    key_names: tuple[str, ...] = ()
    key_types: tuple[str, ...] = ()
    public_cells: tuple[tuple, ...] = ()
    threshold_measure: str | None = None


@dataclass(frozen=True)
class OutputColumnSpec:
    name: str
    type: str
    noisy: bool
    measure: str | None = None
    """The measure this column releases directly (for accuracy), if any."""
    ratio_of: tuple[str, str] | None = None
    """(numerator measure, denominator measure) for AVG-like columns."""


@dataclass(frozen=True)
class DPPlan:
    dataset: str
    table: str
    canonical_sql: str
    bounded: exp.Select | None
    bounded_sql: str
    """Empty when the query has only quantiles (their values come from quantile_sql)."""
    keys: KeyRelease
    measures: tuple[Measure, ...]
    outputs: tuple[OutputColumnSpec, ...]
    postprocess: exp.Select
    direct_path: bool = False
    quantiles: tuple[QuantileMeasure, ...] = ()
    quantile_sql: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def engine_sql(self) -> str:
        """Everything that runs on private data, for audit and explain."""
        return ";\n".join(sql for sql in (self.bounded_sql, self.quantile_sql) if sql)

    def measure(self, name: str) -> Measure:
        for m in self.measures:
            if m.name == name:
                return m
        raise KeyError(name)

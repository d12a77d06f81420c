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
    bounded: exp.Select
    bounded_sql: str
    keys: KeyRelease
    measures: tuple[Measure, ...]
    outputs: tuple[OutputColumnSpec, ...]
    postprocess: exp.Select
    direct_path: bool = False
    notes: tuple[str, ...] = field(default=())

    def measure(self, name: str) -> Measure:
        for m in self.measures:
            if m.name == name:
                return m
        raise KeyError(name)

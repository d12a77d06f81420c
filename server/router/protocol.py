"""What the router and the domains agree on for one federated query (pure, no I/O).

Both sides plan the analyst's SQL against the same public metadata and reduce the plan to a
`FederatedPlan`: the bounded SQL, the layout of the integer vector every domain contributes
(measure-major over the public key cells), the noise calibration, and a fingerprint over all
of it plus the federation settings. A domain refuses a request whose fingerprint differs from
its own, so masks only ever cancel for identical plans and nobody is charged for garbage.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from sqlglot import exp

from accountant.zcdp import rho_for_epsilon
from rewriter import plan_query
from rewriter.plan import DPPlan, Sensitivity
from sqlgate import release as noise
from sqlgate.catalog import resolve_in
from sqlgate.errors import InvalidParameter, NotFound, UnsupportedQuery
from sqlgate.metadata import DatasetMeta, TableMeta, dataset_to_dict, parse_dataset

PROTOCOL_VERSION = "sqlgate-federation/1"
_SUMMABLE_KINDS = ("count", "count_col", "units", "sum", "sum_sq")
# Metadata fields that are each domain's own policy, not part of the shared schema.
_LOCAL_FIELDS = ("budget", "analyst_budgets", "description")


@dataclass(frozen=True)
class Federation:
    """Settings every domain and the router must hold identically."""

    parties: tuple[str, ...]
    noise_domain: str
    max_domains_per_unit: int = 1
    """How many domains one privacy unit can appear in (1: the partition is disjoint)."""

    def __post_init__(self):
        if not self.parties or len(set(self.parties)) != len(self.parties):
            raise ValueError("federation parties must be distinct and non-empty")
        if self.noise_domain not in self.parties:
            raise ValueError("the noise domain must be one of the parties")
        if not 1 <= int(self.max_domains_per_unit) <= len(self.parties):
            raise ValueError("max_domains_per_unit must be between 1 and the number of parties")

    @classmethod
    def of(cls, parties: Sequence[str], noise_domain: str, max_domains_per_unit: int = 1):
        # One canonical order everywhere: masks are + towards later parties, - towards earlier.
        return cls(tuple(sorted(str(p) for p in parties)), str(noise_domain),
                   int(max_domains_per_unit))

    def to_dict(self) -> dict:
        return {"parties": list(self.parties), "noise_domain": self.noise_domain,
                "max_domains_per_unit": self.max_domains_per_unit}

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> "Federation":
        try:
            return cls.of(body["parties"], body["noise_domain"],
                          body.get("max_domains_per_unit", 1))
        except (KeyError, TypeError, ValueError):
            raise InvalidParameter("invalid federation settings in the request") from None

    @property
    def share_limit(self) -> int:
        """Each partial value is clamped to +-this so the total fits in signed 64 bits."""
        return (1 << 62) // len(self.parties)


@dataclass(frozen=True)
class FederatedPlan:
    plan: DPPlan
    release: Any  # sqlgate.release.ReleasePlan
    meta: DatasetMeta
    epsilon: float
    federation: Federation
    cells: tuple[tuple, ...]
    fingerprint: str

    @property
    def length(self) -> int:
        return len(self.plan.measures) * len(self.cells)


def plan_federated(sql: str, resolve_table: Callable[[exp.Table], tuple[DatasetMeta, TableMeta]],
                   dataset_meta: Callable[[str], DatasetMeta], epsilon: float | None,
                   federation: Federation) -> FederatedPlan:
    """Plan and calibrate a query for federation; refuses what cannot be securely summed."""
    if not isinstance(sql, str):
        raise InvalidParameter("the query must be a string")
    plan = plan_query(sql, resolve_table)
    meta = dataset_meta(plan.dataset)
    if plan.keys.mode == "threshold":
        raise UnsupportedQuery(
            "federated queries need GROUP BY columns with declared public key sets: keys "
            "found in the data (threshold release) cannot be combined across domains yet",
            hint="ask the data owners to declare public_keys for the grouping columns")
    if getattr(plan, "quantiles", ()):
        raise UnsupportedQuery("quantiles (MEDIAN, PERCENTILE_CONT, MIN, MAX) are not supported "
                               "in federated queries yet; COUNT, SUM, AVG, VARIANCE and STDDEV are")
    for m in plan.measures:
        if m.kind not in _SUMMABLE_KINDS:
            raise UnsupportedQuery(f"measure kind '{m.kind}' cannot be combined across domains")
    if not plan.measures or not plan.bounded_sql:
        raise UnsupportedQuery("the query has nothing to combine across domains")
    epsilon = checked_epsilon(meta, epsilon)
    scaled = _scale_sensitivity(plan, federation.max_domains_per_unit)
    release = noise.calibrate(scaled, epsilon=epsilon, delta=meta.query_delta,
                              mechanism=meta.mechanism, rho_for_epsilon=rho_for_epsilon)
    cells = ((),) if plan.keys.mode == "none" else tuple(plan.keys.public_cells)
    fingerprint = _fingerprint(plan, release, meta, epsilon, federation, cells)
    return FederatedPlan(plan=scaled, release=release, meta=meta, epsilon=epsilon,
                         federation=federation, cells=cells, fingerprint=fingerprint)


def checked_epsilon(meta: DatasetMeta, epsilon: float | None) -> float:
    if epsilon is None:
        return float(meta.query_epsilon)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) \
            or not math.isfinite(epsilon) or epsilon <= 0:
        raise InvalidParameter("epsilon must be a positive finite number")
    return float(epsilon)


def _scale_sensitivity(plan: DPPlan, k: int) -> DPPlan:
    """A unit in k domains is bounded in each, so it moves the total by up to k times as much
    (triangle inequality on every norm)."""
    if k == 1:
        return plan
    measures = tuple(dataclasses.replace(m, sensitivity=Sensitivity(
        l0=m.sensitivity.l0 * k, linf=m.sensitivity.linf * k, l1=m.sensitivity.l1 * k,
        l2=m.sensitivity.l2 * k)) for m in plan.measures)
    return dataclasses.replace(plan, measures=measures)


def _fingerprint(plan: DPPlan, release, meta: DatasetMeta, epsilon: float,
                 federation: Federation, cells) -> str:
    body = {
        "protocol": PROTOCOL_VERSION,
        "dataset": meta.name,
        "schema": schema_fingerprint(meta),
        "bounded_sql": plan.bounded_sql,
        "keys": [plan.keys.mode, list(plan.keys.key_names), list(plan.keys.key_types),
                 [[repr(v) for v in cell] for cell in cells]],
        "measures": [[m.name, m.kind, m.column, m.fixed_point_bits, m.sensitivity.l0,
                      m.sensitivity.linf, m.sensitivity.l1, repr(m.sensitivity.l2)]
                     for m in plan.measures],
        "noise": [[n.measure, n.mechanism, repr(n.scale)] for n in release.noise.values()],
        "cost": release.cost.to_dict(),
        "epsilon": repr(epsilon),
        "federation": federation.to_dict(),
    }
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- partial vectors


def partial_vector(fplan: FederatedPlan, raw_rows: Sequence[tuple]) -> list[int]:
    """The bounded SQL's rows as one integer vector: measure-major over the public cells.

    Rows for cells outside the public key set cannot occur (the bounded SQL filters them);
    absent cells count 0. Values are clamped so the federation's total fits in 64 bits.
    """
    plan = fplan.plan
    key_count = len(plan.keys.key_names)
    by_key = {tuple(row[:key_count]): row[key_count:] for row in raw_rows}
    limit = fplan.federation.share_limit
    empty = (None,) * len(plan.measures)
    vector: list[int] = []
    for index in range(len(plan.measures)):
        for cell in fplan.cells:
            value = by_key.get(tuple(cell), empty)[index]
            value = 0 if value is None else int(value)
            vector.append(max(-limit, min(limit, value)))
    return vector


def split_measures(fplan: FederatedPlan, vector: Sequence[int]) -> dict[str, list[int]]:
    cells = len(fplan.cells)
    return {m.name: list(vector[i * cells:(i + 1) * cells])
            for i, m in enumerate(fplan.plan.measures)}


# ---------------------------------------------------------------- shared metadata


def public_metadata(meta: DatasetMeta) -> dict:
    """The schema part of a dataset's metadata: what every domain must declare identically.
    Budgets, descriptions and source paths are each domain's own business."""
    body = dataset_to_dict(meta)
    for name in _LOCAL_FIELDS:
        body.pop(name, None)
    for table in body["tables"].values():
        table.pop("source", None)
    return body


def schema_fingerprint(meta: DatasetMeta) -> str:
    text = json.dumps(public_metadata(meta), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def metadata_from_public(body: Mapping[str, Any],
                         default_budget: Mapping[str, float] | None = None) -> DatasetMeta:
    """A DatasetMeta for planning at the router. Its budget is informational only (the
    tightest of the domains' default budgets): the router holds no ledger, every domain
    enforces its own."""
    raw = dict(body)
    raw["budget"] = dict(default_budget or {"epsilon": 1.0, "delta": 0.0})
    return parse_dataset(raw)


def default_budget_of(meta: DatasetMeta) -> dict:
    return {"epsilon": float(meta.default_budget.epsilon),
            "delta": float(meta.default_budget.delta)}


def tightest_budget(budgets) -> dict | None:
    budgets = [b for b in budgets if isinstance(b, Mapping)]
    try:
        return {"epsilon": min(float(b["epsilon"]) for b in budgets),
                "delta": min(float(b.get("delta", 0.0)) for b in budgets)} if budgets else None
    except (KeyError, TypeError, ValueError):
        return None


class MetadataResolver:
    """Table resolution over metadata only (the router has no engine and no data)."""

    def __init__(self, datasets: Mapping[str, DatasetMeta]):
        self._datasets = {name.lower(): meta for name, meta in datasets.items()}

    def scoped(self, scope: Iterable[str]) -> "MetadataResolver":
        """Only the datasets in `scope` (the caller's grants); the others look missing."""
        visible = {name.lower() for name in scope}
        return MetadataResolver({name: meta for name, meta in self._datasets.items()
                                 if name in visible})

    def dataset(self, name: str) -> DatasetMeta:
        meta = self._datasets.get(name.lower())
        if meta is None:
            raise NotFound(f"dataset '{name}' does not exist")
        return meta

    def datasets(self) -> list[DatasetMeta]:
        return sorted(self._datasets.values(), key=lambda m: m.name)

    def resolve_table(self, node: exp.Table) -> tuple[DatasetMeta, TableMeta]:
        return resolve_in(self._datasets, node)

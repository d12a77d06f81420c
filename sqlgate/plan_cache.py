"""Remember DP plans, so a repeated query text skips parsing, planning and SQL generation.

A plan is a pure function of the SQL text, the datasets the caller may see (its scope) and
the catalog's metadata: it never depends on data. The key therefore holds exactly those:
the text, the scope, and the (name, version) of every dataset in the catalog (a dataset
loaded, replaced or dropped changes the versions, so stale plans are never used; table
names that resolve without a schema depend on all datasets, hence all versions). Errors
are not cached: a refused query is re-planned, and refused, every time.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Hashable

from rewriter.plan import DPPlan
from sqlgate.postprocess import FastProjection

DEFAULT_CAPACITY = 512


@dataclass(frozen=True)
class PlannedQuery:
    plan: DPPlan
    postprocess_sql: str
    """plan.postprocess rendered for DuckDB once (sqlglot generation is not free)."""
    output_types: tuple[str, ...]
    """Engine types of the post-processed columns, found on an empty noisy table."""
    fast_postprocess: FastProjection | None = None
    """The post-processing evaluated without the engine, when it is a plain projection
    (checked against the engine when planned); None: always the engine."""
    listed_quantile_sql: str | None = None
    """DuckDB only: plan.quantile_sql with each cell's values gathered into one list per
    quantile (one row per cell); None without GROUP BY keys, where rows are as cheap."""


class PlanCache:
    """A thread-safe LRU map from plan keys to PlannedQuery."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self._capacity = capacity
        self._items: OrderedDict[Hashable, PlannedQuery] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_build(self, key: Hashable, build: Callable[[], PlannedQuery]) -> PlannedQuery:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        # Built outside the lock: planning is pure, so two threads racing on one key build
        # equal plans and either may win.
        planned = build()
        if self._capacity:
            with self._lock:
                self._items[key] = planned
                self._items.move_to_end(key)
                while len(self._items) > self._capacity:
                    self._items.popitem(last=False)
        return planned

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

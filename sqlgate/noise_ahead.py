"""Noise drawn while the engine runs, for answers whose cells are known before the data.

With public key sets or no GROUP BY, the cells of an answer (and so the length of every
measure's noise vector) follow from the plan alone. OpenDP's integer mechanisms are additive:
the vector Laplace / Gaussian measurement on integers returns x + Z, coordinate by coordinate,
saturating at the i64 limits, with Z drawn independently of x. So Z can be drawn by that very
measurement on a vector of zeros before the data is read, on a worker thread while DuckDB
runs (it releases the GIL), and added afterwards: `release.add_drawn(x, Z)` is exactly what the
measurement returns for x with those draws. On a 2-3 ms TPC-H query this hid 0.1-0.7 ms of
OpenDP's Python glue (one call per measure) behind the engine.

Nothing here sees data: a draw that is never used (the engine failed, the dataset was replaced,
the budget was refused) is dropped and reveals nothing. Thresholded keys (cells found in the
data) and quantiles keep drawing after the engine; the pool also runs a grouped quantile's
per-cell releases side by side (`run_all`, `release.noisy_quantiles`).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable, Sequence, TypeVar

from rewriter.plan import DPPlan
from sqlgate import release

WORKERS = 4

T = TypeVar("T")


def cells_known_before_data(plan: DPPlan) -> int | None:
    """How many cells the answer has, when the plan alone says (else None)."""
    if not plan.measures:
        return None
    if plan.keys.mode == "none":
        return 1
    if plan.keys.mode == "public":
        return len(plan.keys.public_cells)
    return None


def draw(plan: DPPlan, release_plan, cells: int) -> dict[str, list[int]]:
    """OpenDP's noise for every measure: its measurement applied to `cells` zeros."""
    return {m.name: release.noisy_vector(release_plan.noise[m.name], [0] * cells)
            for m in plan.measures}


class NoiseAhead:
    """A small worker pool per gateway and process for drawing noise ahead of the data.

    Re-created in a forked child (its parent's worker threads do not exist there)."""

    def __init__(self, workers: int = WORKERS):
        self._workers = workers
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = None
        self._closed = False

    def submit(self, plan: DPPlan, release_plan) -> Future | None:
        cells = cells_known_before_data(plan)
        if cells is None:
            return None
        pool = self._current_pool()
        return pool.submit(draw, plan, release_plan, cells) if pool is not None else None

    def run_all(self, tasks: Sequence[Callable[[], T]]) -> list[T]:
        """Run independent tasks on the pool (in the caller's thread once closed); their
        results in order. The first failure is raised, after every task has finished, so
        no task is still running on data when the caller moves on."""
        pool = self._current_pool()
        if pool is None:
            return [task() for task in tasks]
        futures = [pool.submit(task) for task in tasks]
        wait(futures)
        return [future.result() for future in futures]

    def _current_pool(self) -> ThreadPoolExecutor | None:
        with self._lock:
            if self._closed:
                return None
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="sqlgate-noise")
                self._pid = os.getpid()
            return self._pool

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.shutdown(wait=False, cancel_futures=True)

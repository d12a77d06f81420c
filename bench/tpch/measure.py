"""Timing and accuracy helpers of the benchmark (sqlgate, raw DuckDB and SmartNoise alike).

An answer is a list of rows; `key_positions` says which output columns are group keys (the
others are estimates). Errors are relative to the true (un-noised, un-bounded) answer, per
cell: |estimate - truth| / |truth|. A true cell missing from the estimate (dropped by a
threshold) counts as error 1.0; true values of 0 or NULL have no relative error and are
skipped.
"""
from __future__ import annotations

import datetime as dt
import decimal
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

MISSING_CELL_ERROR = 1.0


@dataclass(frozen=True)
class Timing:
    median_ms: float
    runs_ms: tuple[float, ...]


def time_interleaved(runners: dict[str, Callable[[int], Any]], runs: int, warmup: int = 1
                     ) -> dict[str, tuple[Timing, list[Any]]]:
    """Call every runner `warmup` times untimed, then `runs` times timed, alternating the
    systems run by run, so a slow spell of the machine (other jobs) hits all of them alike
    and their ratios stay meaningful. Returns {name: (timing, results)}.

    The order rotates from run to run (`rotated_order`), so no system always runs right
    after the same other one (a run right after another process's work is slower)."""
    for i in range(warmup):
        for run in runners.values():
            run(-1 - i)
    times: dict[str, list[float]] = {name: [] for name in runners}
    results: dict[str, list[Any]] = {name: [] for name in runners}
    for i in range(runs):
        for name in rotated_order(list(runners), i):
            run = runners[name]
            start = time.perf_counter()
            results[name].append(run(i))
            times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: (Timing(statistics.median(times[name]), tuple(round(t, 3) for t in times[name])),
                   results[name]) for name in runners}


def rotated_order(names: list[str], run: int) -> list[str]:
    """`names` starting at position run mod len(names): over len(names) runs every system
    takes every position once."""
    shift = run % len(names) if names else 0
    return names[shift:] + names[:shift]


def _key(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()[:10]
    return str(value)


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float, decimal.Decimal)):
        number = float(value)
        return number if math.isfinite(number) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def cells(rows: Sequence[Sequence[Any]], key_positions: Sequence[int]) -> dict[tuple, list]:
    """Rows keyed by their group-key values (normalised to text)."""
    return {tuple(_key(row[i]) for i in key_positions): list(row) for row in rows}


def relative_errors(truth_rows, estimate_rows, key_positions: Sequence[int]) -> list[float]:
    """One relative error per true cell and estimated column."""
    truth = cells(truth_rows, key_positions)
    estimate = cells(estimate_rows, key_positions)
    width = len(next(iter(truth.values()))) if truth else 0
    value_positions = [i for i in range(width) if i not in set(key_positions)]
    errors = []
    for key, true_row in truth.items():
        got = estimate.get(key)
        for i in value_positions:
            true_value = _number(true_row[i])
            if true_value is None or true_value == 0:
                continue
            if got is None:
                errors.append(MISSING_CELL_ERROR)
                continue
            value = _number(got[i]) if i < len(got) else None
            errors.append(MISSING_CELL_ERROR if value is None
                          else abs(value - true_value) / abs(true_value))
    return errors


def median_or_none(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None

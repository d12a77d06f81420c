"""Turn the unmasked noisy total into the analyst's answer (post-processing only).

Everything here sees public key cells and already-noised integers, so it is post-processing
of a DP release. It mirrors the tail of Gateway.query (noisy table -> plan.postprocess in a
scratch sandboxed DuckDB -> typed output columns with 95% half-widths).
"""
from __future__ import annotations

import uuid
from typing import Sequence

import pandas as pd

from server.router.protocol import FederatedPlan, split_measures
from sqlgate import accuracy
from sqlgate.executor import sandboxed_duckdb
from sqlgate.postprocess import POSTPROCESS_MEMORY_LIMIT, run_postprocess, typed_keys
from sqlgate.results import DPResult, OutputColumn


def noisy_frame(fplan: FederatedPlan, total: Sequence[int] | None) -> pd.DataFrame:
    """The noisy table post-processing reads; empty (typed) when total is None."""
    plan = fplan.plan
    cells = list(fplan.cells) if total is not None else []
    if plan.keys.mode == "none" and total is not None:
        cells = [()]
    columns: dict[str, list] = {name: [cell[i] for cell in cells]
                                for i, name in enumerate(plan.keys.key_names)}
    measures = split_measures(fplan, total) if total is not None else {}
    for m in plan.measures:
        columns[m.name] = measures.get(m.name, [])
    frame = pd.DataFrame(columns, columns=list(plan.keys.key_names) + [m.name for m in plan.measures])
    for i, name in enumerate(plan.keys.key_names):
        frame[name] = typed_keys(frame[name], plan.keys.key_types[i])
    for m in plan.measures:
        frame[m.name] = frame[m.name].astype("int64")
    return frame


def output_columns(fplan: FederatedPlan, *, with_accuracy: bool) -> tuple[OutputColumn, ...]:
    frame = noisy_frame(fplan, None)
    _, types = _run_postprocess(fplan, frame)
    return _columns(fplan, types, frame if with_accuracy else None)


def release_result(fplan: FederatedPlan, total: Sequence[int], sql: str) -> DPResult:
    frame = noisy_frame(fplan, total)
    rows, types = _run_postprocess(fplan, frame)
    return DPResult(columns=_columns(fplan, types, frame), rows=rows,
                    cost=fplan.release.cost, cached=False, query_id=uuid.uuid4().hex,
                    dataset=fplan.meta.name, sql=sql, rewritten_sql=fplan.plan.bounded_sql,
                    mechanism=fplan.meta.mechanism, key_release=fplan.plan.keys.mode)


def _columns(fplan: FederatedPlan, types, frame: pd.DataFrame | None
             ) -> tuple[OutputColumn, ...]:
    """The gateway's output columns (sqlgate.accuracy); no CIs without a frame."""
    if frame is None:
        return accuracy.output_columns(fplan.plan, types, None)
    return accuracy.output_columns(fplan.plan, types, fplan.release,
                                   lambda name: frame[name].to_numpy(), len(frame))


def _run_postprocess(fplan: FederatedPlan, frame: pd.DataFrame):
    conn = sandboxed_duckdb(None, threads=1, memory_limit=POSTPROCESS_MEMORY_LIMIT)
    try:
        return run_postprocess(conn, fplan.plan.postprocess.sql(dialect="duckdb"), frame)
    finally:
        conn.close()



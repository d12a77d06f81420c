"""Released columns with their 95% confidence half-widths, for the gateway and the router.

Noisy measures get their exact CI from the release plan. Ratios (AVG, VARIANCE, STDDEV) get a
delta-method half-width, (ci95(sum) + |mean| * ci95(count)) / count, taken at the median over
the released cells: it depends only on noisy values, so it is post-processing.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from rewriter.plan import DPPlan
from sqlgate.postprocess import type_from_engine
from sqlgate.results import OutputColumn

NoisyColumn = Callable[[str], np.ndarray]
"""The released (noisy) values of one measure, by measure name."""


def output_columns(plan: DPPlan, engine_types: Sequence, release_plan,
                   noisy: NoisyColumn | None = None, cells: int = 0
                   ) -> tuple[OutputColumn, ...]:
    """Output columns; CIs only with a release plan, ratio CIs only once there are cells."""
    columns = []
    for spec, engine_type in zip(plan.outputs, engine_types):
        type_name = spec.type or type_from_engine(engine_type)
        ci = None
        if release_plan is not None and spec.measure is not None:
            ci = release_plan.ci95(plan.measure(spec.measure))
        elif release_plan is not None and noisy is not None and spec.ratio_of is not None:
            ci = typical_ratio_ci(plan, release_plan, noisy, cells, spec.ratio_of)
        columns.append(OutputColumn(spec.name, type_name, spec.noisy, ci))
    return tuple(columns)


def typical_ratio_ci(plan: DPPlan, release_plan, noisy: NoisyColumn, cells: int,
                     ratio_of) -> float | None:
    if cells == 0:
        return None
    numerator, denominator = (plan.measure(n) for n in ratio_of)
    ci_sum = release_plan.ci95(numerator)
    ci_count = release_plan.ci95(denominator)
    # numpy, not pandas Series arithmetic: this runs on every AVG-like answer (~1.5 ms less).
    counts = np.maximum(np.asarray(noisy(denominator.name), dtype=float), 1.0)
    means = np.asarray(noisy(numerator.name), dtype=float) / numerator.scale_factor / counts
    typical = float(np.median((ci_sum + np.abs(means) * ci_count) / counts))
    return typical if math.isfinite(typical) else None

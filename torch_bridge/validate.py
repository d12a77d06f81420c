"""Submission-time checks of a training request, without torch, data or budget.

The HTTP server calls this when an analyst POSTs `/v1/requests` with kind `training`, so a
spec that could never run is refused before an owner reviews it.
"""
from __future__ import annotations

from typing import Any

from torch_bridge.data import TrainingQuery, plan_training_query
from torch_bridge.spec import TrainingSpec, parse_training_spec


def check_training_request(gateway, dataset: str, sql: str, spec: Any) -> tuple[TrainingSpec,
                                                                                TrainingQuery]:
    parsed = parse_training_spec(spec if spec is not None else {}, sql=sql)
    query = plan_training_query(gateway.dataset(dataset), parsed)
    return parsed, query

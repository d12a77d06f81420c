"""What the gateway returns: noisy answers with their cost and accuracy."""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from typing import Any

from accountant.cost import PrivacyCost


@dataclass(frozen=True)
class OutputColumn:
    name: str
    type: str  # int | float | string | bool | date
    noisy: bool
    ci95: float | None = None
    """95% confidence half-width of the noise (typical over rows for ratios like AVG)."""

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "noisy": self.noisy, "ci95": self.ci95}


@dataclass(frozen=True)
class DPResult:
    columns: tuple[OutputColumn, ...]
    rows: list[tuple]
    cost: PrivacyCost
    cached: bool
    query_id: str
    dataset: str
    sql: str
    rewritten_sql: str
    mechanism: str = "laplace"
    key_release: str = "none"

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def to_pandas(self):
        import pandas as pd
        frame = pd.DataFrame.from_records(self.rows, columns=self.column_names)
        frame.attrs["sqlgate"] = {
            "query_id": self.query_id, "dataset": self.dataset, "cost": self.cost.to_dict(),
            "cached": self.cached, "ci95": {c.name: c.ci95 for c in self.columns if c.noisy},
        }
        return frame

    def to_dict(self) -> dict:
        return {
            "query_id": self.query_id, "dataset": self.dataset,
            "columns": [c.to_dict() for c in self.columns],
            "rows": [[_jsonable(v) for v in row] for row in self.rows],
            "cost": self.cost.to_dict(), "cached": self.cached,
            "mechanism": self.mechanism, "key_release": self.key_release,
        }

    def to_json_bytes(self) -> bytes:
        body = self.to_dict()
        body.update(sql=self.sql, rewritten_sql=self.rewritten_sql)
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def from_json_bytes(cls, data: bytes, *, cached: bool) -> "DPResult":
        body = json.loads(data)
        columns = tuple(OutputColumn(**c) for c in body["columns"])
        rows = [tuple(_from_json(v, c.type) for v, c in zip(row, columns)) for row in body["rows"]]
        return cls(columns=columns, rows=rows, cost=PrivacyCost(**body["cost"]), cached=cached,
                   query_id=body["query_id"], dataset=body["dataset"], sql=body["sql"],
                   rewritten_sql=body["rewritten_sql"], mechanism=body["mechanism"],
                   key_release=body["key_release"])


@dataclass(frozen=True)
class Explanation:
    dataset: str
    cost: PrivacyCost
    columns: tuple[OutputColumn, ...]
    rewritten_sql: str
    mechanism: str
    key_release: str
    budget: Any = None
    threshold: int | None = None
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        budget = self.budget.to_dict() if hasattr(self.budget, "to_dict") else (
            self.budget.__dict__ if self.budget is not None else None)
        return {"dataset": self.dataset, "cost": self.cost.to_dict(),
                "columns": [c.to_dict() for c in self.columns],
                "rewritten_sql": self.rewritten_sql, "mechanism": self.mechanism,
                "key_release": self.key_release, "threshold": self.threshold,
                "budget": _jsonable_tree(budget), "notes": list(self.notes)}


@dataclass(frozen=True)
class ExactResult:
    """An un-noised answer: only ever produced for an owner-approved request."""

    columns: tuple[str, ...]
    types: tuple[str, ...]
    rows: list[tuple]
    truncated: bool = False

    def to_dict(self) -> dict:
        return {"columns": list(self.columns), "types": list(self.types),
                "rows": [[_jsonable(v) for v in row] for row in self.rows],
                "truncated": self.truncated}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (_dt.date, _dt.datetime)):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def _jsonable_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable_tree(v) for v in value]
    if hasattr(value, "to_dict"):
        return _jsonable_tree(value.to_dict())
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable_tree(dict(value.__dict__))
    return _jsonable(value)


def _from_json(value: Any, type_name: str) -> Any:
    if value is None:
        return None
    if type_name == "date" and isinstance(value, str):
        return _dt.date.fromisoformat(value[:10])
    return value

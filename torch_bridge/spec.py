"""`TrainingSpec`: what an analyst asks to train, parsed and validated from JSON.

Torch-free on purpose: the HTTP server validates a submitted spec (and names the bad field)
without importing torch. TorchScript bytes are only base64-decoded here; they are loaded
with `torch.jit.load` (never pickle / `torch.load`) by `torch_bridge.models`.

    {
      "model": {"type": "mlp", "hidden": [32], "activation": "relu"}
               | {"type": "logistic"}
               | {"type": "torchscript", "data": "<base64 of torch.jit.save output>"},
      "sql": "SELECT age, bmi, smoker, region, label FROM hospital.patients",
      "label": "label",
      "task": "binary" | "multiclass" | "regression",
      "loss": "bce" | "cross_entropy" | "mse" | "huber",     (default from task)
      "optimizer": "sgd" | "adam", "lr": 0.1,
      "epochs": 5, "batch_size": 256, "max_grad_norm": 1.0,
      "epsilon": 3.0, "delta": 1e-6,
      "max_rows_per_unit": 1,   (optional; default from table metadata)
      "loss_bound": 2.0,        (optional; clamp of the per-unit loss that progress reports)
      "seed": 0                 (optional; model initialisation only, never sampling or noise)
    }
"""
from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any, Mapping

from sqlgate.errors import InvalidParameter

TASKS = ("binary", "multiclass", "regression")
LOSSES_FOR_TASK = {"binary": ("bce",), "multiclass": ("cross_entropy",),
                   "regression": ("mse", "huber")}
OPTIMIZERS = ("sgd", "adam")
ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid")
MODEL_TYPES = ("logistic", "linear", "mlp", "torchscript")

MAX_EPOCHS = 1_000
MAX_BATCH = 100_000
MAX_HIDDEN_UNITS = 4_096
MAX_LAYERS = 8
MAX_ROWS_PER_UNIT = 64
MAX_EPSILON = 100.0
MAX_DELTA = 1e-3
MAX_TORCHSCRIPT_BYTES = 32 * 1024 * 1024

_FIELDS = {"model", "sql", "label", "task", "loss", "optimizer", "lr", "epochs", "batch_size",
           "max_grad_norm", "epsilon", "delta", "max_rows_per_unit", "loss_bound", "seed",
           "momentum"}


class SpecError(InvalidParameter):
    """A bad training spec; the message and details name the field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"training spec field '{field}': {message}", details={"field": field})
        self.field = field


@dataclass(frozen=True)
class ModelSpec:
    type: str
    hidden: tuple[int, ...] = ()
    activation: str = "relu"
    torchscript: bytes | None = None

    def to_dict(self) -> dict:
        body: dict[str, Any] = {"type": self.type}
        if self.type == "mlp":
            body.update(hidden=list(self.hidden), activation=self.activation)
        if self.torchscript is not None:
            body["data"] = base64.b64encode(self.torchscript).decode("ascii")
        return body


@dataclass(frozen=True)
class TrainingSpec:
    model: ModelSpec
    sql: str
    label: str
    task: str
    loss: str
    optimizer: str
    lr: float
    epochs: int
    batch_size: int
    max_grad_norm: float
    epsilon: float
    delta: float
    max_rows_per_unit: int | None = None
    loss_bound: float | None = None
    seed: int = 0
    momentum: float = 0.0

    @property
    def effective_loss_bound(self) -> float:
        """Per-unit loss clamp used only for the (noisy) loss reported as progress."""
        if self.loss_bound is not None:
            return self.loss_bound
        return 1.0 if self.task == "regression" else 2.0

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "sql": self.sql, "label": self.label,
                "task": self.task, "loss": self.loss, "optimizer": self.optimizer,
                "lr": self.lr, "epochs": self.epochs, "batch_size": self.batch_size,
                "max_grad_norm": self.max_grad_norm, "epsilon": self.epsilon,
                "delta": self.delta, "max_rows_per_unit": self.max_rows_per_unit,
                "loss_bound": self.loss_bound, "seed": self.seed, "momentum": self.momentum}


def parse_training_spec(raw: Any, *, sql: str | None = None) -> TrainingSpec:
    """Validate a JSON mapping. `sql` (the request's SQL) is used when the spec has none;
    if both are given they must agree, so the owner approves exactly what runs."""
    if not isinstance(raw, Mapping):
        raise SpecError("<spec>", "must be a JSON object")
    unknown = sorted(set(map(str, raw)) - _FIELDS)
    if unknown:
        raise SpecError(unknown[0], f"unknown field (allowed: {', '.join(sorted(_FIELDS))})")
    spec_sql = raw.get("sql")
    if spec_sql is None:
        spec_sql = sql
    elif sql is not None and spec_sql.strip() != sql.strip():
        raise SpecError("sql", "differs from the request's SQL; give it once")
    if not isinstance(spec_sql, str) or not spec_sql.strip():
        raise SpecError("sql", "is required: a SELECT of feature and label columns")
    task = _choice(raw.get("task"), "task", TASKS)
    loss = _get(raw, "loss", LOSSES_FOR_TASK[task][0])
    loss = _choice(loss, "loss", LOSSES_FOR_TASK[task],
                   extra=f" for task '{task}'")
    label = raw.get("label")
    if not isinstance(label, str) or not label.strip():
        raise SpecError("label", "is required: the name of the label column in the SQL")
    return TrainingSpec(
        model=_model(raw.get("model")),
        sql=spec_sql,
        label=label.strip().lower(),
        task=task,
        loss=loss,
        optimizer=_choice(_get(raw, "optimizer", "sgd"), "optimizer", OPTIMIZERS),
        lr=_positive_float(_get(raw, "lr", 0.1), "lr", upper=100.0),
        epochs=_int(raw.get("epochs"), "epochs", 1, MAX_EPOCHS),
        batch_size=_int(raw.get("batch_size"), "batch_size", 1, MAX_BATCH),
        max_grad_norm=_positive_float(_get(raw, "max_grad_norm", 1.0), "max_grad_norm",
                                      upper=1e6),
        epsilon=_positive_float(raw.get("epsilon"), "epsilon", upper=MAX_EPSILON),
        delta=_delta(raw.get("delta"), "delta"),
        max_rows_per_unit=(None if raw.get("max_rows_per_unit") is None else
                           _int(raw["max_rows_per_unit"], "max_rows_per_unit", 1,
                                MAX_ROWS_PER_UNIT)),
        loss_bound=(None if raw.get("loss_bound") is None else
                    _positive_float(raw["loss_bound"], "loss_bound", upper=1e6)),
        seed=_int(_get(raw, "seed", 0), "seed", 0, 2**31 - 1),
        momentum=_fraction(_get(raw, "momentum", 0.0), "momentum"),
    )


# ---------------------------------------------------------------------- helpers


def _get(raw: Mapping, key: str, default: Any) -> Any:
    """JSON null means 'use the default', like an absent field."""
    value = raw.get(key)
    return default if value is None else value


def _model(raw: Any) -> ModelSpec:
    if not isinstance(raw, Mapping):
        raise SpecError("model", 'is required: {"type": "logistic" | "mlp" | "torchscript", ...}')
    kind = _choice(raw.get("type"), "model.type", MODEL_TYPES)
    allowed = {"logistic": {"type"}, "linear": {"type"}, "mlp": {"type", "hidden", "activation"},
               "torchscript": {"type", "data"}}[kind]
    unknown = sorted(set(map(str, raw)) - allowed)
    if unknown:
        raise SpecError(f"model.{unknown[0]}", f"not allowed for model type '{kind}'")
    if kind == "mlp":
        hidden = raw.get("hidden")
        if not isinstance(hidden, (list, tuple)) or not 1 <= len(hidden) <= MAX_LAYERS:
            raise SpecError("model.hidden", f"must be a list of 1 to {MAX_LAYERS} layer widths")
        widths = tuple(_int(h, f"model.hidden[{i}]", 1, MAX_HIDDEN_UNITS)
                       for i, h in enumerate(hidden))
        activation = _choice(raw.get("activation", "relu"), "model.activation", ACTIVATIONS)
        return ModelSpec("mlp", widths, activation)
    if kind == "torchscript":
        data = raw.get("data")
        if not isinstance(data, str) or not data:
            raise SpecError("model.data", "must be the base64 text of a TorchScript archive")
        if len(data) > MAX_TORCHSCRIPT_BYTES * 4 // 3 + 4:
            raise SpecError("model.data", f"TorchScript archives are limited to "
                                          f"{MAX_TORCHSCRIPT_BYTES} bytes")
        try:
            blob = base64.b64decode(data.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise SpecError("model.data", "is not valid base64") from None
        if not blob.startswith(b"PK"):
            raise SpecError("model.data", "is not a TorchScript archive (torch.jit.save output, "
                                          "a zip file); pickled models are never accepted")
        return ModelSpec("torchscript", torchscript=blob)
    return ModelSpec(kind)


def _choice(value: Any, field: str, options: tuple[str, ...], extra: str = "") -> str:
    if not isinstance(value, str) or value.lower() not in options:
        raise SpecError(field, f"must be one of {', '.join(options)}{extra}")
    return value.lower()


def _int(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(field, f"must be an integer from {low} to {high}")
    return value


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(field, "must be a finite number")
    return float(value)


def _positive_float(value: Any, field: str, *, upper: float) -> float:
    if value is None:
        raise SpecError(field, "is required")
    number = _number(value, field)
    if not 0 < number <= upper:
        raise SpecError(field, f"must be > 0 and <= {upper:g}")
    return number


def _fraction(value: Any, field: str) -> float:
    number = _number(value, field)
    if not 0 <= number < 1:
        raise SpecError(field, "must be in [0, 1)")
    return number


def _delta(value: Any, field: str) -> float:
    if value is None:
        raise SpecError(field, "is required (DP-SGD is (epsilon, delta)-DP)")
    number = _number(value, field)
    if not 0 < number <= MAX_DELTA:
        raise SpecError(field, f"must be > 0 and <= {MAX_DELTA:g}")
    return number

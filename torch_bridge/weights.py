"""Trained weights as safetensors bytes (no pickle anywhere), with public metadata."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load as _load
from safetensors.torch import save as _save

CONTENT_TYPE = "application/x-safetensors"
METADATA_KEY = "sqlgate"


def to_safetensors(state: dict[str, torch.Tensor], info: dict) -> bytes:
    """`info` must hold public facts only (spec, input layout, privacy parameters)."""
    tensors = {name: t.detach().to(torch.float32).contiguous() for name, t in state.items()}
    return _save(tensors, metadata={METADATA_KEY: json.dumps(info, sort_keys=True, default=str)})


def from_safetensors(blob: bytes) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and the sqlgate metadata of a weights file (for analysts and tests)."""
    tensors = _load(blob)
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + header_len])
    info = json.loads(header.get("__metadata__", {}).get(METADATA_KEY, "{}"))
    return tensors, info

"""Skip torch_bridge tests locally when the optional torch stack is missing; FAIL in CI
(where .ci/install-torch.sh installs it)."""
from __future__ import annotations

import importlib

import pytest

from tests._require import in_ci

TORCH_STACK = ("torch", "safetensors", "opacus")


def require_torch_stack() -> None:
    for name in TORCH_STACK:
        try:
            importlib.import_module(name)
        except ImportError:
            message = f"python module {name} is not installed (.ci/install-torch.sh installs it)"
            if in_ci():
                pytest.fail(message, pytrace=False)
            pytest.skip(message, allow_module_level=True)

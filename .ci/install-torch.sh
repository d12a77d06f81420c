#!/usr/bin/env bash
# torch_bridge test needs (the optional `[torch]` extra): the CPU build of torch 2.13.0
# (ONLY this exact version: others pull GBs of CUDA wheels), safetensors, and Opacus for its
# RDP accountant, and cryptography (ChaCha20 keystream for DP-SGD batch sampling). Opacus is installed with --no-deps so it can never pull another torch; its
# real dependencies (numpy, scipy, opt-einsum) are installed explicitly. Idempotent; fast
# when everything is present.
set -euo pipefail

have() { python - "$@" <<'PY' >/dev/null 2>&1
# Installed distributions (and exact versions where given), read from metadata: no imports.
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, _, wanted = spec.partition("==")
    if wanted and not version(name).startswith(wanted):
        raise SystemExit(1)
    version(name)
PY
}

if ! have torch==2.13.0; then
    python -m pip install -q "torch==2.13.0"
fi
if ! have safetensors; then
    python -m pip install -q "safetensors>=0.4"
fi
if ! have scipy opt-einsum; then
    python -m pip install -q "scipy>=1.11" "opt-einsum>=3.3"
fi
if ! have cryptography; then
    python -m pip install -q "cryptography>=42"
fi
if ! have opacus==1.6.0; then
    python -m pip install -q --no-deps "opacus==1.6.0"
fi
python -c "import torch, safetensors, opacus.accountants; print('torch', torch.__version__, 'opacus', opacus.__version__)"

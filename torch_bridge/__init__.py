"""DP-SGD training jobs on data selected by SQL, and federated averaging across domains.

Needs the optional extra `pip install "sqlgate[torch]"` (torch, safetensors, opacus).
Importing this package does not import torch: `torch_bridge.spec` and `torch_bridge.data`
validate a submitted job without it; the training modules import torch themselves.
"""

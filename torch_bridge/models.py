"""Build the model of a training spec: declarative (logistic/linear, MLP) or TorchScript.

TorchScript archives are loaded with `torch.jit.load` from memory, never with pickle or
`torch.load`. Analyst code then runs inside the domain, so it is restricted:
* only parameters are trained and released; a model with buffers (state that `forward`
  could write data into and that would leave un-noised) is refused;
* its inlined graph may only use `aten::` math and structural `prim::` nodes; anything
  that can touch files, print, call back into Python, mutate in place (schema `(a!)`:
  `add_`, `list.append`, `out=`) or read uninitialised memory (`empty`) is refused, so
  `forward` is a pure function of one unit's rows and the parameters;
* it must map a [batch, inputs] float tensor to [batch, outputs] (checked on zeros).
"""
from __future__ import annotations

import io

import torch
from torch import nn

from torch_bridge.spec import ModelSpec, SpecError

MAX_PARAMETERS = 200_000
_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid}
_DENIED_OP_WORDS = ("file", "save", "load", "print", "python", "storage", "set_", "pickle",
                    "rpc", "fork", "wait", "warn", "raise", "sleep", "_local_scalar",
                    "record", "profiler", "callmethod", "callfunction",
                    # uninitialised memory could hold freed rows of OTHER units, which would
                    # break the per-unit sensitivity bound
                    "empty", "resize", "unsafe", "as_strided", "data_ptr")
_ALLOWED_PRIM = {"prim::Constant", "prim::GetAttr", "prim::ListConstruct", "prim::ListUnpack",
                 "prim::TupleConstruct", "prim::TupleUnpack", "prim::TupleIndex",
                 "prim::NumToTensor", "prim::If", "prim::Loop", "prim::device", "prim::dtype",
                 "prim::unchecked_cast", "prim::min", "prim::max", "prim::shape"}


def build_model(spec: ModelSpec, inputs: int, outputs: int, seed: int = 0) -> nn.Module:
    if spec.type == "torchscript":
        model = load_torchscript(spec.torchscript or b"", inputs, outputs)
    else:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # initial weights are public: any seed the analyst likes
        try:
            if spec.type in ("logistic", "linear"):
                model = nn.Linear(inputs, outputs)
            else:
                layers: list[nn.Module] = []
                width = inputs
                for hidden in spec.hidden:
                    layers += [nn.Linear(width, hidden), _ACTIVATIONS[spec.activation]()]
                    width = hidden
                layers.append(nn.Linear(width, outputs))
                model = nn.Sequential(*layers)
        finally:
            torch.random.set_rng_state(generator_state)
    count = sum(p.numel() for p in model.parameters())
    if count > MAX_PARAMETERS:
        raise SpecError("model", f"has {count} parameters; at most {MAX_PARAMETERS} are "
                                 f"supported (each step draws OpenDP noise per parameter)")
    if count == 0:
        raise SpecError("model", "has no trainable parameters")
    return model


def load_torchscript(blob: bytes, inputs: int, outputs: int) -> torch.jit.ScriptModule:
    try:
        module = torch.jit.load(io.BytesIO(blob), map_location="cpu")
    except Exception:  # noqa: BLE001 - any load failure is the analyst's archive
        raise SpecError("model.data", "could not be loaded as a TorchScript archive") from None
    if any(True for _ in module.buffers()):
        raise SpecError("model.data", "TorchScript models with buffers are not accepted "
                                      "(only noised parameters may leave the domain)")
    for kind, schema in _graph_ops(module):
        if "!" in schema:
            # A mutating op (x.add_(...), list.append, out=...) could write one unit's data
            # into parameters or attributes, where it would leave un-noised or reach other
            # units' gradients. Out-of-place ops only.
            raise SpecError("model.data", f"TorchScript operation '{kind}' mutates a tensor or "
                                          f"list in place; use out-of-place operations")
        lowered = kind.lower()
        if any(word in lowered for word in _DENIED_OP_WORDS) or \
                (kind.startswith("prim::") and kind not in _ALLOWED_PRIM) or \
                not (kind.startswith("aten::") or kind.startswith("prim::")):
            raise SpecError("model.data", f"TorchScript operation '{kind}' is not allowed")
    module.eval()
    with torch.no_grad():
        try:
            out = module(torch.zeros(2, inputs))
        except Exception:  # noqa: BLE001
            raise SpecError("model.data", f"the model must accept a [batch, {inputs}] float "
                                          f"tensor") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) not in ((2, outputs),) + \
            (((2,),) if outputs == 1 else ()):
        raise SpecError("model.data", f"the model must return a [batch, {outputs}] tensor")
    module.train()
    return module


def _graph_ops(module: torch.jit.ScriptModule) -> set[tuple[str, str]]:
    """(kind, schema text) of every node of the inlined forward graph, nested blocks too."""
    kinds: set[tuple[str, str]] = set()

    def walk(block) -> None:
        for node in block.nodes():
            schema = ""
            if node.kind().startswith("aten::"):
                try:
                    schema = str(node.schema())
                except RuntimeError:
                    schema = "!"  # an aten node without a schema is not understood: refuse
            kinds.add((node.kind(), schema))
            for sub in node.blocks():
                walk(sub)

    walk(module.inlined_graph)  # submodule calls are inlined into this graph
    return kinds


def is_scripted(model: nn.Module) -> bool:
    return isinstance(model, torch.jit.ScriptModule)

"""The layers of a model as job files name them: output shapes, parameters, receptive fields.

The model is traced with `torch.fx` (the graph gives the execution order, which module each
operation belongs to, and how branches join) and run once on a zero input (`ShapeProp`) for the
output shapes. Receptive fields come from `cnnzoo.interpret.receptive_field`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from cnnzoo.errors import UnsupportedModel
from cnnzoo.interpret.modules import get_layer
from cnnzoo.interpret.receptive_field import (
    SPATIAL,
    ReceptiveField,
    as_receptive_field,
    node_fields,
    node_shape,
    pair,
    tensor_args,
)

__all__ = [
    "LayerInfo",
    "ReceptiveField",
    "describe_layers",
    "receptive_field",
]


@dataclass(frozen=True)
class LayerInfo:
    """One module call in execution order.

    Attributes:
        name: the module's qualified name (what job files and `--layer` use).
        kind: the module's class name.
        output_shape: output shape without the batch dimension.
        params: parameters owned by this module (not its children).
        calls: how often the module runs per forward pass (torchvision ResNet calls each
            block's ReLU twice; such a module cannot be picked as a layer).
        receptive_field: None when the output has no spatial layout tied to the input.
        formula: for conv/pool layers, the output size by O = (W - K + 2P)/S + 1.
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    calls: int
    receptive_field: ReceptiveField | None
    formula: str | None

    @property
    def selectable(self) -> bool:
        """Whether jobs may choose this layer (it runs once per forward pass)."""
        return self.calls == 1


def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> fx.GraphModule:
    try:
        graph = fx.symbolic_trace(model)
    except Exception as err:  # fx raises many kinds of errors on data-dependent control flow
        raise UnsupportedModel(
            f"cannot trace {type(model).__name__} with torch.fx ({type(err).__name__}: {err}); "
            "layer listing and receptive fields need a traceable model"
        ) from None
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    example = torch.zeros((1, *input_shape), dtype=dtype, device=device)
    training = [(m, m.training) for m in graph.modules()]
    graph.eval()
    try:
        with torch.no_grad():
            ShapeProp(graph).propagate(example)
    finally:
        for module, flag in training:
            module.training = flag
    return graph


def _formula(
    module: nn.Module, in_shape: tuple[int, ...] | None, out_shape: tuple[int, ...]
) -> str | None:
    if not isinstance(module, SPATIAL) or in_shape is None or isinstance(module.padding, str):
        return None
    width = in_shape[-1]
    kernel = pair(module.kernel_size)[1]
    dilation = pair(getattr(module, "dilation", 1))[1]
    if dilation != 1:
        kernel = (kernel - 1) * dilation + 1
    pad = pair(module.padding)[1]
    stride = pair(module.stride)[1]
    return f"({width}-{kernel}+2*{pad})/{stride}+1={out_shape[-1]}"


def describe_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerInfo]:
    """Every module of `model` that runs in a forward pass, containers included (a block's output
    is its last operation's output), in order of first use.

    Args:
        model: any `torch.fx`-traceable model.
        input_shape: one input without the batch dimension, e.g. (1, 32, 32).
    """
    graph = _trace(model, input_shape)
    fields = node_fields(graph)
    modules = dict(model.named_modules())
    last_node: dict[str, fx.Node] = {}  # per call key ("layer1.0.relu", "layer1.0.relu@1")
    call_keys: dict[str, list[str]] = {}  # per module path, in order of first use
    for node in graph.graph.nodes:
        for key, (path, _cls) in (node.meta.get("nn_module_stack") or {}).items():
            keys = call_keys.setdefault(path, [])
            if key not in keys:
                keys.append(key)
            last_node[key] = node
    infos = []
    for name, keys in call_keys.items():
        if name not in modules:
            continue
        module = modules[name]
        node = last_node[keys[0]]
        shape = node_shape(node) or ()
        in_args = tensor_args(node)
        in_shape = node_shape(in_args[0]) if in_args else None
        infos.append(
            LayerInfo(
                name=name,
                kind=type(module).__name__,
                output_shape=tuple(shape[1:]),
                params=sum(p.numel() for p in module.parameters()),
                calls=len(keys),
                receptive_field=as_receptive_field(fields.get(node)) if len(keys) == 1 else None,
                formula=_formula(module, in_shape, shape) if node.op == "call_module" else None,
            )
        )
    return infos


def receptive_field(model: nn.Module, layer: str, input_shape: tuple[int, ...]) -> ReceptiveField:
    """The analytic receptive field of one unit of `layer`.

    Raises:
        LayerNotFound: unknown layer (lists the valid names).
        UnsupportedModel: the layer's output is not spatial, or the module runs more than once.
    """
    get_layer(model, layer)
    for info in describe_layers(model, input_shape):
        if info.name == layer:
            if info.calls != 1:
                raise UnsupportedModel(
                    f"layer {layer!r} runs {info.calls} times per forward pass; pick a module "
                    "that runs once (e.g. the convolution before it)"
                )
            if info.receptive_field is None:
                raise UnsupportedModel(
                    f"layer {layer!r} ({info.kind}, output {list(info.output_shape)}) has no "
                    "spatial receptive field; pick a convolution or pooling layer"
                )
            return info.receptive_field
    raise UnsupportedModel(f"layer {layer!r} does not run in a forward pass")

"""Receptive fields: the analytic recurrences over a traced graph, and an autograd cross-check.

Per spatial axis the field of unit 0 is carried as its first and last input pixel (`lo`, `hi`)
with the step between neighbouring units (`jump`):

    conv / pool (kernel k, stride s, padding p, dilation d):
        lo' = lo - p * jump,   hi' = hi + ((k - 1) * d - p) * jump,   jump' = s * jump

Branches that meet (residual additions, channel concatenation) take the union of their fields.
A layer after a flatten or a global operation sees the whole image and has no field.

`support_box` checks the analytic value independently: it copies the model into a one-channel
"skeleton" (every convolution 1->1 with a positive averaging kernel, ReLU and batch norm as
identity, max-pooling as average pooling, so no gradient can cancel or be switched off) and
returns the bounding box of the input pixels that one unit's gradient reaches.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn

from cnnzoo.errors import UnsupportedModel
from cnnzoo.interpret.forward import forward_to
from cnnzoo.interpret.graphs.fields import union

__all__ = ["ReceptiveField", "as_receptive_field", "node_fields", "support_box"]


@dataclass(frozen=True)
class ReceptiveField:
    """Where unit (y, x) of a layer looks in the input image.

    Attributes:
        size: (height, width) in pixels of one unit's field.
        stride: (y, x) pixels between neighbouring units.
        offset: (y, x) input coordinate of the top-left pixel of unit (0, 0)'s field; negative
            when the field starts in the zero padding.
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of unit (y, x)'s field, end-exclusive, unclipped."""
        top = self.offset[0] + y * self.stride[0]
        left = self.offset[1] + x * self.stride[1]
        return top, left, top + self.size[0], left + self.size[1]


# Per-axis field of one tensor: (jump, lo, hi) for y and x.
_Axis = tuple[int, int, int]
_Field = tuple[_Axis, _Axis]
SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def pair(value: Any) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def _through_window(field: _Field, module: nn.Module) -> _Field:
    kernel = pair(module.kernel_size)
    stride = pair(module.stride)
    padding = pair(module.padding)
    dilation = pair(getattr(module, "dilation", 1))
    if isinstance(module.padding, str):  # Conv2d padding="same"/"valid"
        raise UnsupportedModel(f"string padding {module.padding!r} is not supported")
    axes = []
    for axis in range(2):
        jump, lo, hi = field[axis]
        span = (kernel[axis] - 1) * dilation[axis]
        axes.append(
            (
                jump * stride[axis],
                lo - padding[axis] * jump,
                hi + (span - padding[axis]) * jump,
            )
        )
    return axes[0], axes[1]


def _through_adaptive(
    field: _Field, in_hw: tuple[int, ...], out_hw: tuple[int, ...]
) -> _Field | None:
    axes = []
    for axis in range(2):
        if in_hw[axis] % out_hw[axis]:
            return None  # uneven windows: no single stride
        kernel = in_hw[axis] // out_hw[axis]
        jump, lo, hi = field[axis]
        axes.append((jump * kernel, lo, hi + (kernel - 1) * jump))
    return axes[0], axes[1]


def tensor_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []

    def visit(value: Any) -> None:
        if isinstance(value, fx.Node):
            found.append(value)
        elif isinstance(value, (tuple, list)):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    visit(node.args)
    visit(node.kwargs)
    return found


def node_shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def node_fields(graph: fx.GraphModule) -> dict[fx.Node, _Field | None]:
    """The receptive field of every node's output (None: not spatial or whole image)."""
    fields: dict[fx.Node, _Field | None] = {}
    modules = dict(graph.named_modules())
    for node in graph.graph.nodes:
        shape = node_shape(node)
        if node.op == "placeholder":
            fields[node] = ((1, 0, 0), (1, 0, 0)) if shape is not None and len(shape) == 4 else None
            continue
        inputs = [fields.get(arg) for arg in tensor_args(node)]
        known = [f for f in inputs if f is not None]
        if node.op == "call_module" and isinstance(modules[node.target], SPATIAL):
            fields[node] = _through_window(known[0], modules[node.target]) if known else None
            continue
        if node.op == "call_module" and isinstance(
            modules[node.target], (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
        ):
            in_shape = node_shape(tensor_args(node)[0])
            ok = known and in_shape is not None and shape is not None
            fields[node] = _through_adaptive(known[0], in_shape[-2:], shape[-2:]) if ok else None
            continue
        # Anything else keeps the field only if it keeps the spatial layout (elementwise ops,
        # norms, activations, channel concatenation, additions of branches).
        in_shapes = [node_shape(arg) for arg in tensor_args(node)]
        spatial_kept = (
            shape is not None
            and len(shape) == 4
            and known
            and all(s is None or (len(s) == 4 and s[-2:] == shape[-2:]) for s in in_shapes)
        )
        fields[node] = union(known) if spatial_kept else None
    return fields


def as_receptive_field(field: _Field | None) -> ReceptiveField | None:
    if field is None:
        return None
    (jy, ly, hy), (jx, lx, hx) = field
    return ReceptiveField(size=(hy - ly + 1, hx - lx + 1), stride=(jy, jx), offset=(ly, lx))


def _skeleton(model: nn.Module) -> nn.Module:
    """A float64 copy in which every path from input to output carries a positive gradient."""
    skeleton = copy.deepcopy(model).eval()
    replacements: dict[str, nn.Module] = {}
    for name, module in skeleton.named_modules():
        if isinstance(module, nn.Conv2d):
            conv = nn.Conv2d(
                1, 1, module.kernel_size, module.stride, module.padding, module.dilation,
                bias=False, padding_mode=module.padding_mode,
            )  # fmt: skip
            kh, kw = conv.kernel_size
            nn.init.constant_(conv.weight, 1.0 / (kh * kw))
            replacements[name] = conv
        elif isinstance(module, nn.MaxPool2d):
            if pair(module.dilation) != (1, 1):
                raise UnsupportedModel("dilated max-pooling has no average-pooling stand-in")
            replacements[name] = nn.AvgPool2d(
                module.kernel_size, module.stride, module.padding, ceil_mode=module.ceil_mode
            )
        elif isinstance(module, (nn.ReLU, nn.modules.batchnorm._BatchNorm, nn.Dropout)):
            replacements[name] = nn.Identity()
    for name, new in replacements.items():
        parent_name, _, child = name.rpartition(".")
        parent = skeleton.get_submodule(parent_name) if parent_name else skeleton
        setattr(parent, child, new)
    return skeleton.double()


def support_box(
    model: nn.Module, layer: str, image_size: tuple[int, int], unit: tuple[int, int]
) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), end-exclusive, of the input pixels that the gradient of
    `layer`'s unit (y, x) reaches in the model's one-channel skeleton (see the module docstring).

    Args:
        model: the model (not modified; a copy is used).
        layer: the module name.
        image_size: (height, width) of the input to use.
        unit: the unit's (y, x) position in the layer's output.
    """
    skeleton = _skeleton(model)
    x = torch.ones((1, 1, *image_size), dtype=torch.float64, requires_grad=True)
    out = forward_to(skeleton, [layer], x)[layer]
    (grad,) = torch.autograd.grad(out[0, :, unit[0], unit[1]].sum(), x)
    rows = torch.nonzero(grad[0, 0].abs().sum(dim=1) > 0).flatten()
    cols = torch.nonzero(grad[0, 0].abs().sum(dim=0) > 0).flatten()
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1

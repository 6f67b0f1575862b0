"""Receptive fields read off a classifier's ONNX graph, without torch: where unit (y, x) of a
layer looks in the input image, for the explorer to draw and for explanation graphs' metadata.

The same recurrences as `cnnzoo.interpret.receptive_field` (which walks a traced PyTorch
model), per spatial axis carrying the first and last input pixel of unit 0's field (`lo`,
`hi`) and the step between neighbouring units (`jump`):

    Conv / MaxPool / AveragePool (kernel k, stride s, begin pad p, dilation d):
        lo' = lo - p * jump,   hi' = hi + ((k - 1) * d - p) * jump,   jump' = s * jump

A node that keeps the spatial size (activations, normalisation, additions, concatenation)
takes the union of its inputs' fields, a global pooling the whole plane's; anything else that
changes the spatial layout (a flatten, a resize) leaves a tensor without a field (it sees the
whole image, or has no single stride). `tests/interpret/graphs/test_fields.py` checks that both
walks agree on the zoo.
"""

from __future__ import annotations

from typing import Any

from cnnzoo.interpret.graphs.classifier import Classifier
from cnnzoo.interpret.graphs.shapes import attributes

__all__ = ["field_json", "receptive_fields", "union"]

# Per axis (jump, lo, hi); a field is (y axis, x axis).
_Axis = tuple[int, int, int]
_Field = tuple[_Axis, _Axis]
_WINDOWS = ("Conv", "MaxPool", "AveragePool")


def receptive_fields(cls: Classifier) -> dict[str, _Field | None]:
    """The field of every image-dependent 4-d tensor of `cls` (None: no single field)."""
    fields: dict[str, _Field | None] = {}
    image = cls.infos[cls.explained]
    if image.rank == 4:
        fields[cls.explained] = ((1, 0, 0), (1, 0, 0))
    for index in cls.data_nodes:
        node = cls.nodes[index]
        out = cls.infos.get(node.output[0]) if node.output else None
        if out is None or out.rank != 4 or out.batch_axis != 0:
            continue
        known = [f for f in (fields.get(name) for name in node.input) if f is not None]
        if not known:
            continue
        if node.op_type in _WINDOWS:
            fields[node.output[0]] = _through_window(known[0], node, cls)
        elif _global(node.op_type, out.sizes):
            fields[node.output[0]] = _whole_plane(known[0], cls.infos[node.input[0]].sizes)
        elif all(_same_plane(cls, name, out.sizes) for name in node.input if name in fields):
            fields[node.output[0]] = union(known)
    return fields


def field_json(field: _Field | None) -> dict[str, list[int]] | None:
    """A field as the explorer reads it: `size` and `stride` (y, x) in pixels and `offset`, the
    input coordinate of unit (0, 0)'s top-left pixel (negative in the zero padding)."""
    if field is None:
        return None
    (jy, ly, hy), (jx, lx, hx) = field
    return {"size": [hy - ly + 1, hx - lx + 1], "stride": [jy, jx], "offset": [ly, lx]}


def _same_plane(cls: Classifier, name: str, sizes: tuple[int, ...]) -> bool:
    info = cls.infos.get(name)
    return info is not None and info.rank == 4 and info.sizes[-2:] == sizes[-2:]


def _global(op: str, sizes: tuple[int, ...]) -> bool:
    """A pooling over the whole plane (torch's adaptive pooling to 1x1 exports as one)."""
    return sizes[-2:] == (1, 1) and (op.startswith("Global") or op.startswith("Reduce"))


def _whole_plane(field: _Field, sizes: tuple[int, ...]) -> _Field:
    axes = []
    for axis in range(2):
        jump, lo, hi = field[axis]
        kernel = sizes[-2 + axis]
        axes.append((jump * kernel, lo, hi + (kernel - 1) * jump))
    return axes[0], axes[1]


def _through_window(field: _Field, node: Any, cls: Classifier) -> _Field | None:
    attrs = attributes(node)
    if node.op_type == "Conv":
        weight = cls.const_shape(node.input[1]) if cls.is_const(node.input[1]) else None
        kernel = list(attrs.get("kernel_shape") or (weight[2:] if weight else []))
    else:
        kernel = list(attrs.get("kernel_shape", []))
    if len(kernel) != 2 or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None  # not 2-d, or SAME padding (its begins depend on the size): no field
    strides = list(attrs.get("strides", [1, 1]))
    dilations = list(attrs.get("dilations", [1, 1]))
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    axes = []
    for axis in range(2):
        jump, lo, hi = field[axis]
        span = (kernel[axis] - 1) * dilations[axis]
        axes.append((jump * strides[axis], lo - pads[axis] * jump, hi + (span - pads[axis]) * jump))
    return axes[0], axes[1]


def union(fields: list[_Field]) -> _Field | None:
    """The field covering all of `fields` (None when their strides differ: no single field)."""
    axes = []
    for axis in range(2):
        jumps = {f[axis][0] for f in fields}
        if len(jumps) != 1:
            return None
        axes.append((jumps.pop(), min(f[axis][1] for f in fields), max(f[axis][2] for f in fields)))
    return axes[0], axes[1]

"""What each supported operator does to shapes, and the checks that make its backward pass safe.

Shapes are tuples of ints with one `None`: the batch axis, whose size is only known when the
graph runs. Every other size must be known (the backward pass of a convolution needs its
`output_padding`, that of a pooling its divisor map, from static sizes), and no operator may
mix the batch axis with another (a row's map must not depend on the other rows): an operator
that would is refused with `UnsupportedModel` naming the node, its op and why.

Each `analyse_<Op>` takes the node and the `Context` (shapes of the data tensors, values of the
constants and of the tensors computed from runtime shapes) and returns the outputs' shapes and the
parameters its backward rule needs (explicit pads, the indices a slice selects, ...), so the rule
never recomputes them. The set of functions here is the set of operators the transformation
supports; `cnnzoo.interpret.graphs.backward` has one rule per operator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import TensorProto

from cnnzoo.errors import UnsupportedModel

__all__ = [
    "ANALYSERS",
    "FLOAT_TYPES",
    "Analysis",
    "Context",
    "Shape",
    "TensorInfo",
    "attributes",
    "refuse",
]

Shape = tuple[int | None, ...]
FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE})
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class TensorInfo:
    """A tensor that depends on the image: its shape (`None` at the batch axis) and type."""

    shape: Shape
    dtype: int

    @property
    def batch_axis(self) -> int:
        return self.shape.index(None)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def sizes(self) -> tuple[int, ...]:
        """The sizes without the batch axis."""
        return tuple(d for d in self.shape if d is not None)


@dataclass
class Analysis:
    """An analysed node: what its outputs are (`TensorInfo`, a runtime-shape value as an object
    array with `None` for the batch size, or None for an output nobody reads) and what its
    backward rule needs."""

    outputs: list[TensorInfo | np.ndarray | None]
    params: dict[str, Any] = field(default_factory=dict)


class Context(Protocol):
    def info(self, name: str) -> TensorInfo | None: ...
    def is_const(self, name: str) -> bool: ...
    def const(self, name: str) -> np.ndarray: ...
    def const_shape(self, name: str) -> tuple[int, ...]: ...
    def shape_value(self, name: str) -> np.ndarray | None: ...
    def used(self, name: str) -> bool: ...


def describe(node: onnx.NodeProto) -> str:
    """How messages name a node: its name (or first output) and op."""
    return f"node {node.name or node.output[0]!r} ({node.op_type})"


def refuse(node: onnx.NodeProto, why: str) -> UnsupportedModel:
    return UnsupportedModel(f"{describe(node)}: {why}")


def attributes(node: onnx.NodeProto) -> dict[str, Any]:
    values = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        values[attribute.name] = value.decode() if isinstance(value, bytes) else value
    return values


def _inputs(node: onnx.NodeProto) -> list[str]:
    return list(node.input)


def _optional(node: onnx.NodeProto, index: int) -> str | None:
    return node.input[index] if len(node.input) > index and node.input[index] else None


def _data(ctx: Context, node: onnx.NodeProto, index: int = 0) -> TensorInfo:
    info = ctx.info(node.input[index])
    if info is None:
        raise refuse(node, f"input {index} must be computed from the image")
    return info


def _const(ctx: Context, node: onnx.NodeProto, index: int, what: str) -> np.ndarray:
    name = node.input[index]
    if not ctx.is_const(name):
        raise refuse(node, f"its {what} must be a constant, but {name!r} is computed at run time")
    return ctx.const(name)


def _only_first_output(ctx: Context, node: onnx.NodeProto) -> None:
    extra = [name for name in node.output[1:] if name and ctx.used(name)]
    if extra:
        raise refuse(node, f"its extra output {extra[0]!r} is used; only the first is supported")


def _batch_first(node: onnx.NodeProto, info: TensorInfo, what: str = "input") -> None:
    if info.batch_axis != 0:
        raise refuse(
            node,
            f"its {what} has the batch axis at position {info.batch_axis}, not 0 (shape "
            f"{_fmt(info.shape)}); the operator would mix the batch with another axis",
        )


def _fmt(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def _axis(node: onnx.NodeProto, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise refuse(node, f"axis {axis} is out of range for rank {rank}")
    return axis % rank


# -- elementwise ------------------------------------------------------------------------------


def _same(ctx: Context, node: onnx.NodeProto) -> Analysis:
    _only_first_output(ctx, node)
    return Analysis([_data(ctx, node)])


def _dropout(ctx: Context, node: onnx.NodeProto) -> Analysis:
    training = _optional(node, 2)
    if training is not None and (not ctx.is_const(training) or bool(ctx.const(training))):
        raise refuse(node, "dropout in training mode is random; export the model in eval mode")
    return _same(ctx, node)


def _cast(ctx: Context, node: onnx.NodeProto) -> Analysis:
    info = _data(ctx, node)
    to = attributes(node)["to"]
    if to not in FLOAT_TYPES:
        raise refuse(
            node, f"casts to {TensorProto.DataType.Name(to)}; a gradient cannot pass through it"
        )
    return Analysis([TensorInfo(info.shape, to)])


def broadcast_shapes(node: onnx.NodeProto, shapes: Sequence[Shape]) -> Shape:
    """numpy broadcasting with the batch axis (`None`), which may meet only 1 or itself."""
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    out: list[int | None] = []
    for sizes in zip(*padded, strict=True):
        if None in sizes:
            if any(d is not None and d != 1 for d in sizes):
                raise refuse(
                    node,
                    f"broadcasts the batch axis against a fixed size (shapes "
                    f"{', '.join(_fmt(s) for s in shapes)})",
                )
            out.append(None)
            continue
        known = {d for d in sizes if d != 1}
        if len(known) > 1:
            raise refuse(node, f"shapes {', '.join(_fmt(s) for s in shapes)} do not broadcast")
        out.append(known.pop() if known else 1)
    if out.count(None) != 1:
        raise refuse(node, "its output has no single batch axis")
    return tuple(out)


def _binary(ctx: Context, node: onnx.NodeProto) -> Analysis:
    shapes: list[Shape] = []
    dtype = None
    for name in node.input:
        info = ctx.info(name)
        if info is not None:
            shapes.append(info.shape)
            dtype = info.dtype
        elif ctx.is_const(name):
            shapes.append(ctx.const_shape(name))
        else:
            raise refuse(node, f"input {name!r} is neither computed from the image nor constant")
    data = [ctx.info(name) is not None for name in node.input]
    if node.op_type == "Div" and data[1]:
        raise refuse(
            node,
            "divides by a tensor computed from the image; only division by a constant is supported",
        )
    assert dtype is not None
    return Analysis([TensorInfo(broadcast_shapes(node, shapes), dtype)], {"data": data})


# -- convolution and pooling ----------------------------------------------------------------


def _window_pads(
    node: onnx.NodeProto,
    attrs: dict[str, Any],
    sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> list[int]:
    """Explicit pads (begins, then ends) for the spatial sizes, resolving `auto_pad`."""
    spatial = len(sizes)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = list(attrs.get("pads", [0] * 2 * spatial))
        if len(pads) != 2 * spatial:
            raise refuse(node, f"has {len(pads)} pads for {spatial} spatial axes")
        return pads
    if auto_pad == "VALID":
        return [0] * 2 * spatial
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise refuse(node, f"auto_pad {auto_pad!r} is not an ONNX value")
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small = total // 2
        begin = small if auto_pad == "SAME_UPPER" else total - small
        begins.append(begin)
        ends.append(total - begin)
    return begins + ends


def _window_out(
    node: onnx.NodeProto,
    sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
    ceil_mode: bool,
) -> list[int]:
    spatial = len(sizes)
    out = []
    for i, (size, k, s, d) in enumerate(zip(sizes, kernel, strides, dilations, strict=True)):
        begin, end = pads[i], pads[i + spatial]
        span = size + begin + end - ((k - 1) * d + 1)
        if span < 0:
            raise refuse(node, f"its window ({k} x dilation {d}) is larger than the padded input")
        if ceil_mode:
            n = -(-span // s) + 1
            if (n - 1) * s >= size + begin:  # the last window must start inside the input
                n -= 1
        else:
            n = span // s + 1
        out.append(n)
    return out


def _transpose_padding(
    sizes: Sequence[int],
    out: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int],
) -> tuple[list[int], list[int]]:
    """(pads, output_padding) of the ConvTranspose that maps the window op's output back onto
    exactly its input: begins as the forward pads, ends chosen so the size comes out right
    (windows that ran past the end are cropped, input rows no window reached get zeros)."""
    spatial = len(sizes)
    ends, extra = [], []
    for i, (size, n, k, s, d) in enumerate(
        zip(sizes, out, kernel, strides, dilations, strict=True)
    ):
        excess = s * (n - 1) + (k - 1) * d + 1 - pads[i] - size
        ends.append(max(excess, 0))
        extra.append(max(-excess, 0))
    return list(pads[:spatial]) + ends, extra


def _conv(ctx: Context, node: onnx.NodeProto) -> Analysis:
    info = _data(ctx, node)
    _batch_first(node, info)
    if ctx.info(node.input[1]) is not None or (
        _optional(node, 2) is not None and ctx.info(node.input[2]) is not None
    ):
        raise refuse(
            node,
            "its weight or bias is computed from the image; only constant weights are supported",
        )
    _const_weight(ctx, node, 1)
    weight = ctx.const_shape(node.input[1])
    attrs = attributes(node)
    spatial = info.rank - 2
    kernel = list(attrs.get("kernel_shape", weight[2:]))
    strides = list(attrs.get("strides", [1] * spatial))
    dilations = list(attrs.get("dilations", [1] * spatial))
    group = int(attrs.get("group", 1))
    sizes = info.shape[2:]
    assert all(d is not None for d in sizes)
    pads = _window_pads(node, attrs, sizes, kernel, strides, dilations)  # type: ignore[arg-type]
    out = _window_out(node, sizes, kernel, strides, dilations, pads, False)  # type: ignore[arg-type]
    back_pads, output_padding = _transpose_padding(sizes, out, kernel, strides, dilations, pads)  # type: ignore[arg-type]
    return Analysis(
        [TensorInfo((None, weight[0], *out), info.dtype)],
        {
            "kernel": kernel,
            "strides": strides,
            "dilations": dilations,
            "group": group,
            "pads": back_pads,
            "output_padding": output_padding,
        },
    )


def _const_weight(ctx: Context, node: onnx.NodeProto, index: int) -> None:
    if not ctx.is_const(node.input[index]):
        raise refuse(node, f"its weight {node.input[index]!r} is not a constant")


def _pool_geometry(
    ctx: Context, node: onnx.NodeProto
) -> tuple[TensorInfo, dict[str, Any], list[int], list[int], list[int], list[int], list[int]]:
    info = _data(ctx, node)
    _batch_first(node, info)
    attrs = attributes(node)
    spatial = info.rank - 2
    kernel = list(attrs["kernel_shape"])
    strides = list(attrs.get("strides", [1] * spatial))
    dilations = list(attrs.get("dilations", [1] * spatial))
    sizes = [int(d) for d in info.shape[2:]]  # type: ignore[arg-type]
    pads = _window_pads(node, attrs, sizes, kernel, strides, dilations)
    ceil_mode = bool(attrs.get("ceil_mode", 0))
    out = _window_out(node, sizes, kernel, strides, dilations, pads, ceil_mode)
    return info, attrs, sizes, kernel, strides, dilations, pads + out


def _maxpool(ctx: Context, node: onnx.NodeProto) -> Analysis:
    info, attrs, sizes, kernel, strides, dilations, rest = _pool_geometry(ctx, node)
    pads, out = rest[: 2 * len(sizes)], rest[2 * len(sizes) :]
    _only_first_output(ctx, node)
    forward = {k: v for k, v in attrs.items() if k != "storage_order"}
    forward.update(pads=pads, kernel_shape=kernel, strides=strides, dilations=dilations)
    forward.pop("auto_pad", None)
    return Analysis([TensorInfo((None, info.shape[1], *out), info.dtype), None], {"attrs": forward})


def _averagepool(ctx: Context, node: onnx.NodeProto) -> Analysis:
    info, attrs, sizes, kernel, strides, dilations, rest = _pool_geometry(ctx, node)
    pads, out = rest[: 2 * len(sizes)], rest[2 * len(sizes) :]
    include_pad = bool(attrs.get("count_include_pad", 0))
    # The divisor of each output position, per axis (it is a product over the axes), as
    # ONNX Runtime and PyTorch compute it: the window clipped to the padded input, or to the
    # input itself without count_include_pad.
    divisors = []
    for axis, (size, n, k, s, d) in enumerate(
        zip(sizes, out, kernel, strides, dilations, strict=True)
    ):
        if d != 1:
            raise refuse(node, "average pooling with dilations is not supported")
        begin, end = pads[axis], pads[axis + len(sizes)]
        counts = []
        for o in range(n):
            start = o * s - begin
            stop = min(start + k, size + end)
            if not include_pad:
                start, stop = max(start, 0), min(stop, size)
            counts.append(stop - start)
        divisors.append(np.array(counts, dtype=np.float64))
    divisor = divisors[0]
    for more in divisors[1:]:
        divisor = np.multiply.outer(divisor, more)
    back_pads, output_padding = _transpose_padding(sizes, out, kernel, strides, dilations, pads)
    return Analysis(
        [TensorInfo((None, info.shape[1], *out), info.dtype)],
        {
            "kernel": kernel,
            "strides": strides,
            "pads": back_pads,
            "output_padding": output_padding,
            "divisor": divisor,
            "channels": info.shape[1],
        },
    )


def _global_average(ctx: Context, node: onnx.NodeProto) -> Analysis:
    info = _data(ctx, node)
    _batch_first(node, info)
    axes = list(range(2, info.rank))
    return Analysis(
        [TensorInfo((None, info.shape[1], *[1] * (info.rank - 2)), info.dtype)],
        {"axes": axes, "keepdims": True, "count": math.prod(info.sizes[1:])},
    )


def _reduce(ctx: Context, node: onnx.NodeProto) -> Analysis:
    info = _data(ctx, node)
    attrs = attributes(node)
    if "axes" in attrs:
        axes = list(attrs["axes"])
    elif _optional(node, 1) is not None:
        axes = [int(a) for a in _const(ctx, node, 1, "axes").reshape(-1)]
    else:
        axes = []
    if not axes:
        if attrs.get("noop_with_empty_axes", 0):
            return Analysis([info], {"axes": [], "keepdims": True, "count": 1})
        axes = list(range(info.rank))
    axes = sorted({_axis(node, a, info.rank) for a in axes})
    if info.batch_axis in axes:
        raise refuse(node, "reduces over the batch axis, which would mix the images of a batch")
    keepdims = bool(attrs.get("keepdims", 1))
    shape = [1 if i in axes else d for i, d in enumerate(info.shape)]
    if not keepdims:
        shape = [d for i, d in enumerate(shape) if i not in axes]
    count = math.prod(info.shape[a] for a in axes)  # type: ignore[misc]
    return Analysis(
        [TensorInfo(tuple(shape), info.dtype)], {"axes": axes, "keepdims": keepdims, "count": count}
    )


def _batchnorm(ctx: Context, node: onnx.NodeProto) -> Analysis:
    info = _data(ctx, node)
    _batch_first(node, info)
    attrs = attributes(node)
    if attrs.get("training_mode", 0):
        raise refuse(node, "batch normalisation in training mode; export the model in eval mode")
    _only_first_output(ctx, node)
    values = [
        _const(ctx, node, i, what).astype(np.float64) for i, what in ((1, "scale"), (4, "variance"))
    ]
    factor = values[0] / np.sqrt(values[1] + float(attrs.get("epsilon", 1e-5)))
    return Analysis([info], {"factor": factor})


def _gemm(ctx: Context, node: onnx.NodeProto) -> Analysis:
    info = _data(ctx, node)
    attrs = attributes(node)
    if info.rank != 2:
        raise refuse(node, f"its input has rank {info.rank}; Gemm takes matrices")
    if ctx.info(node.input[1]) is not None or (
        _optional(node, 2) is not None and ctx.info(node.input[2]) is not None
    ):
        raise refuse(
            node,
            "its B or C operand is computed from the image; only a constant "
            "weight and bias are supported",
        )
    if attrs.get("transA", 0):
        raise refuse(node, "transA=1 puts the batch axis second; not supported")
    _batch_first(node, info)
    weight = ctx.const_shape(node.input[1])
    features = weight[0] if attrs.get("transB", 0) else weight[1]
    return Analysis(
        [TensorInfo((None, features), info.dtype)],
        {"alpha": float(attrs.get("alpha", 1.0)), "transB": int(attrs.get("transB", 0))},
    )


def _matmul(ctx: Context, node: onnx.NodeProto) -> Analysis:
    info = ctx.info(node.input[0])
    if info is None or ctx.info(node.input[1]) is not None:
        raise refuse(node, "only (image-dependent tensor) @ (constant matrix) is supported")
    _const_weight(ctx, node, 1)
    weight = ctx.const_shape(node.input[1])
    if len(weight) != 2 or info.rank < 2:
        raise refuse(node, "only a 2-D constant right operand is supported")
    if info.batch_axis == info.rank - 1:
        raise refuse(node, "contracts over the batch axis")
    if info.shape[-1] != weight[0]:
        raise refuse(node, f"shapes {_fmt(info.shape)} and {_fmt(weight)} do not multiply")
    return Analysis([TensorInfo((*info.shape[:-1], weight[1]), info.dtype)])


# -- shape operators --------------------------------------------------------------------------


def _reshaped(node: onnx.NodeProto, shape: Shape, target: Sequence[int | None]) -> Shape:
    """The shape `shape` (batch `None`) takes under a Reshape to `target` (ints, -1, 0 and
    `None` for the batch size read from a runtime shape), refusing one that mixes the batch
    with another axis."""
    known = math.prod(d for d in shape if d is not None)
    out: list[tuple[int, int]] = []  # (size, power of the batch size)
    infer = None
    for i, size in enumerate(target):
        if size is None:
            out.append((1, 1))
        elif size == -1:
            if infer is not None:
                raise refuse(node, "has more than one -1 in its shape")
            infer = i
            out.append((0, 0))
        elif size == 0:
            if i >= len(shape):
                raise refuse(node, "copies (0) a dimension the input does not have")
            out.append((1, 1) if shape[i] is None else (int(shape[i]), 0))  # type: ignore[arg-type]
        elif size < 0:
            raise refuse(node, f"has an invalid size {size} in its shape")
        else:
            out.append((int(size), 0))
    fixed = math.prod(s for j, (s, _) in enumerate(out) if j != infer)
    power = sum(p for j, (_, p) in enumerate(out) if j != infer)
    if infer is not None:
        if fixed == 0 or known % fixed:
            raise refuse(node, f"cannot reshape {_fmt(shape)} to {list(target)}")
        out[infer] = (known // fixed, 1 - power)
    elif fixed != known:
        raise refuse(node, f"cannot reshape {_fmt(shape)} to {list(target)}")
    powers = [p for _, p in out]
    if sorted(powers)[-1:] != [1] or powers.count(1) != 1 or any(p not in (0, 1) for p in powers):
        raise refuse(
            node, f"reshapes {_fmt(shape)} to {list(target)}, merging the batch axis with others"
        )
    axis = powers.index(1)
    if out[axis][0] != 1:
        raise refuse(
            node, f"reshapes {_fmt(shape)} to {list(target)}, merging the batch axis with others"
        )
    before = math.prod(d for d in shape[: shape.index(None)])  # type: ignore[misc]
    if math.prod(s for s, _ in out[:axis]) != before:
        raise refuse(
            node, f"reshapes {_fmt(shape)} to {list(target)}, moving data across the batch axis"
        )
    return tuple(None if j == axis else s for j, (s, _) in enumerate(out))


def _reshape(ctx: Context, node: onnx.NodeProto) -> Analysis:
    info = _data(ctx, node)
    name = node.input[1]
    value = ctx.shape_value(name)
    if value is None:
        if not ctx.is_const(name):
            raise refuse(
                node, f"its shape {name!r} is computed in a way the transformation cannot follow"
            )
        value = ctx.const(name)
    target = [None if v is None else int(v) for v in np.asarray(value).reshape(-1)]
    if attributes(node).get("allowzero", 0) and 0 in target:
        raise refuse(node, "reshapes to a size of 0")
    return Analysis([TensorInfo(_reshaped(node, info.shape, target), info.dtype)])


def _flatten(ctx: Context, node: onnx.NodeProto) -> Analysis:
    info = _data(ctx, node)
    axis = int(attributes(node).get("axis", 1))
    axis = axis + info.rank if axis < 0 else axis
    if not 0 <= axis <= info.rank:
        raise refuse(node, f"axis {axis} is out of range for rank {info.rank}")
    # Flatten is a Reshape to [prod(shape[:axis]), prod(shape[axis:])]
    if info.batch_axis < axis:
        target: list[int | None] = [-1, math.prod(info.shape[axis:])]  # type: ignore[arg-type]
    else:
        target = [math.prod(info.shape[:axis]), -1]  # type: ignore[arg-type]
    return Analysis([TensorInfo(_reshaped(node, info.shape, target), info.dtype)])


def _axes_input(ctx: Context, node: onnx.NodeProto) -> list[int]:
    attrs = attributes(node)
    if "axes" in attrs:
        return list(attrs["axes"])
    if _optional(node, 1) is not None:
        return [int(a) for a in _const(ctx, node, 1, "axes").reshape(-1)]
    return []


def _squeeze(ctx: Context, node: onnx.NodeProto) -> Analysis:
    info = _data(ctx, node)
    axes = _axes_input(ctx, node) or [i for i, d in enumerate(info.shape) if d == 1]
    axes = [_axis(node, a, info.rank) for a in axes]
    if any(info.shape[a] != 1 for a in axes):
        raise refuse(node, f"squeezes an axis that is not of size 1 in {_fmt(info.shape)}")
    return Analysis(
        [TensorInfo(tuple(d for i, d in enumerate(info.shape) if i not in axes), info.dtype)]
    )


def _unsqueeze(ctx: Context, node: onnx.NodeProto) -> Analysis:
    info = _data(ctx, node)
    rank = info.rank + len(_axes_input(ctx, node))
    axes = sorted(_axis(node, a, rank) for a in _axes_input(ctx, node))
    shape = list(info.shape)
    for a in axes:
        shape.insert(a, 1)
    return Analysis([TensorInfo(tuple(shape), info.dtype)])


def _transpose(ctx: Context, node: onnx.NodeProto) -> Analysis:
    info = _data(ctx, node)
    perm = list(attributes(node).get("perm", reversed(range(info.rank))))
    if sorted(perm) != list(range(info.rank)):
        raise refuse(node, f"perm {perm} is not a permutation of {info.rank} axes")
    return Analysis([TensorInfo(tuple(info.shape[p] for p in perm), info.dtype)], {"perm": perm})


def _concat(ctx: Context, node: onnx.NodeProto) -> Analysis:
    infos = [ctx.info(name) for name in node.input]
    if any(info is None for info in infos):
        raise refuse(
            node,
            "concatenates a constant with tensors computed from the image; a "
            "constant has no batch axis",
        )
    first = infos[0]
    assert first is not None
    axis = _axis(node, int(attributes(node)["axis"]), first.rank)
    if axis == first.batch_axis:
        raise refuse(node, "concatenates along the batch axis")
    sizes = []
    for info in infos:
        assert info is not None
        others = [d for i, d in enumerate(info.shape) if i != axis]
        if others != [d for i, d in enumerate(first.shape) if i != axis]:
            raise refuse(node, "its inputs' shapes differ off the concatenation axis")
        sizes.append(int(info.shape[axis]))  # type: ignore[arg-type]
    shape = list(first.shape)
    shape[axis] = sum(sizes)
    return Analysis([TensorInfo(tuple(shape), first.dtype)], {"axis": axis, "sizes": sizes})


def _pad(ctx: Context, node: onnx.NodeProto) -> Analysis:
    info = _data(ctx, node)
    attrs = attributes(node)
    mode = attrs.get("mode", "constant")
    if mode != "constant":
        raise refuse(node, f"pads in mode {mode!r}; only constant padding is supported")
    pads = [int(p) for p in _const(ctx, node, 1, "pads").reshape(-1)]
    for index in (2, 3):
        name = _optional(node, index)
        if name is not None and not ctx.is_const(name):
            raise refuse(node, f"its input {name!r} must be a constant")
    axes_name = _optional(node, 3)
    axes = (
        [_axis(node, int(a), info.rank) for a in ctx.const(axes_name).reshape(-1)]
        if axes_name is not None
        else list(range(info.rank))
    )
    if len(pads) != 2 * len(axes):
        raise refuse(node, f"has {len(pads)} pads for {len(axes)} axes")
    full = [0] * 2 * info.rank
    for i, a in enumerate(axes):
        full[a], full[a + info.rank] = pads[i], pads[i + len(axes)]
    if full[info.batch_axis] or full[info.batch_axis + info.rank]:
        raise refuse(node, "pads the batch axis")
    shape = [
        d if d is None else d + full[i] + full[i + info.rank] for i, d in enumerate(info.shape)
    ]
    if any(d is not None and d < 0 for d in shape):
        raise refuse(node, "crops more than the input has")
    return Analysis([TensorInfo(tuple(shape), info.dtype)], {"pads": full})


def slice_indices(size: int, start: int, end: int, step: int) -> list[int]:
    """The indices ONNX's Slice selects along one axis of `size` elements."""
    if step == 0:
        raise ValueError("step 0")
    if start < 0:
        start += size
    if end < 0:
        end += size
    if step > 0:
        start, end = min(max(start, 0), size), min(max(end, 0), size)
    else:
        start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
    return list(range(start, end, step))


def _slice(ctx: Context, node: onnx.NodeProto) -> Analysis:
    info = _data(ctx, node)
    starts = [int(v) for v in _const(ctx, node, 1, "starts").reshape(-1)]
    ends = [int(v) for v in _const(ctx, node, 2, "ends").reshape(-1)]
    axes_name, steps_name = _optional(node, 3), _optional(node, 4)
    axes = (
        [int(v) for v in _const(ctx, node, 3, "axes").reshape(-1)]
        if axes_name
        else list(range(len(starts)))
    )
    steps = (
        [int(v) for v in _const(ctx, node, 4, "steps").reshape(-1)]
        if steps_name
        else [1] * len(starts)
    )
    shape = list(info.shape)
    selections: list[tuple[int, list[int]]] = []
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = _axis(node, axis, info.rank)
        if step == 0:
            raise refuse(node, "has a step of 0")
        size = shape[axis]
        if size is None:
            if start == 0 and step == 1 and end >= 2**31 - 1:  # to the end, as exporters write it
                continue  # the whole batch axis
            raise refuse(node, "slices the batch axis")
        picked = slice_indices(size, start, end, step)
        if picked == list(range(size)):
            continue
        if not picked:
            raise refuse(node, "selects nothing along an axis")
        selections.append((axis, picked))
        shape[axis] = len(picked)
    return Analysis([TensorInfo(tuple(shape), info.dtype)], {"selections": selections})


def _gathernd(ctx: Context, node: onnx.NodeProto) -> Analysis:
    info = _data(ctx, node)
    if attributes(node).get("batch_dims", 0):
        raise refuse(node, "batch_dims other than 0 are not supported")
    indices = _const(ctx, node, 1, "indices").astype(np.int64)
    depth = indices.shape[-1]
    if info.batch_axis < depth:
        raise refuse(node, "indexes the batch axis")
    sizes = np.array(info.shape[:depth], dtype=np.int64)
    if ((indices < -sizes) | (indices >= sizes)).any():
        raise refuse(node, "has indices out of range")
    normalised = np.where(indices < 0, indices + sizes, indices)
    shape = (*indices.shape[:-1], *info.shape[depth:])
    return Analysis([TensorInfo(tuple(shape), info.dtype)], {"indices": normalised})


def _shape(ctx: Context, node: onnx.NodeProto) -> Analysis:
    info = _data(ctx, node)
    attrs = attributes(node)
    start, end = attrs.get("start", 0), attrs.get("end", info.rank)
    dims = np.array(list(info.shape), dtype=object)[slice(start, end)]
    return Analysis([dims])


def _size(ctx: Context, node: onnx.NodeProto) -> Analysis:
    raise refuse(node, "reads the number of elements, which depends on the batch size")


ANALYSERS: dict[str, Callable[[Context, onnx.NodeProto], Analysis]] = {
    "Identity": _same,
    "Dropout": _dropout,
    "Relu": _same,
    "Sigmoid": _same,
    "Tanh": _same,
    "LeakyRelu": _same,
    "Clip": _same,
    "Gelu": _same,
    "Erf": _same,
    "Neg": _same,
    "Softmax": _same,
    "LogSoftmax": _same,
    "Cast": _cast,
    "Add": _binary,
    "Sub": _binary,
    "Mul": _binary,
    "Div": _binary,
    "Conv": _conv,
    "MaxPool": _maxpool,
    "AveragePool": _averagepool,
    "GlobalAveragePool": _global_average,
    "ReduceMean": _reduce,
    "ReduceSum": _reduce,
    "BatchNormalization": _batchnorm,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Transpose": _transpose,
    "Concat": _concat,
    "Pad": _pad,
    "Slice": _slice,
    "GatherND": _gathernd,
    "Shape": _shape,
    "Size": _size,
}

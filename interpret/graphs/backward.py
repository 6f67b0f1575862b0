"""The forward pass copied into the explanation graph, and backward passes through it written
as ONNX nodes.

A backward pass walks the classifier's nodes in reverse topological order, from seed gradients
(a one-hot class score, or a unit of a layer) to the tensors whose gradients are wanted, and
writes each node's backward rule with standard operators:

    Conv                 ConvTranspose with the same weight (output_padding from static sizes)
    MaxPool              the argmax switches: the forward node also returns its Indices, and
                         ScatterElements(reduction="add") routes each gradient to them (windows
                         that overlap and pick the same input add up)
    AveragePool          gradient / divisor map, then a depthwise ConvTranspose of ones
    GlobalAveragePool,   Expand back to the input, divided by the count
      ReduceMean/Sum
    BatchNormalization   gradient * scale / sqrt(var + eps)
    Gemm, MatMul         the gradient times the (transposed) constant weight
    Add, Sub, Mul, Div   by constants or (Add, Sub, Mul) other image-dependent tensors; reduced
                         where the forward broadcast
    Cast                 Cast back
    Reshape, Flatten,    Reshape back to the input's runtime shape
      (Un)Squeeze
    Transpose            the inverse permutation
    Concat               Split
    Pad (constant)       Pad with the negated pads (a crop)
    Slice                Pad (step 1) or ScatterElements into zeros (other steps)
    GatherND             (constant indices) a MatMul with the gather's 0/1 adjoint matrix
    Relu                 the rule: gradient g*1[x>0], deconvnet relu(g), guided relu(g)*1[x>0]

The plain gradient also passes exactly through Sigmoid, Tanh, LeakyRelu, Clip (ReLU6: the
gradient is 0 where x <= min or x >= max, as PyTorch's hardtanh), Gelu (exact erf form), Erf
and Neg. The deconvnet and guided backprop rules are defined for ReLU only: a backward pass with
either rule refuses any other activation on its path with `UnsupportedModel`, as the PyTorch
implementation does, instead of passing the plain gradient back under their name.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from cnnzoo.interpret.graphs.builder import GraphBuilder, numpy_type
from cnnzoo.interpret.graphs.classifier import Classifier
from cnnzoo.interpret.graphs.methods import DECONVNET, GRADIENT, GUIDED
from cnnzoo.interpret.graphs.shapes import TensorInfo, attributes, refuse

__all__ = ["Backward", "Forward", "emit_forward"]


@dataclass
class Forward:
    """One copy of the classifier's forward pass in the explanation graph.

    Attributes:
        names: the copy's name of each classifier tensor it computes (constants and tensors
            the copy does not compute keep their names).
        indices: per MaxPool node index, the name of its Indices output.
    """

    names: dict[str, str] = field(default_factory=dict)
    indices: dict[int, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> str:
        return self.names.get(name, name)


def emit_forward(
    cls: Classifier,
    b: GraphBuilder,
    *,
    feeds: dict[str, str] | None = None,
    hint: str = "copy",
    switches: bool = False,
) -> Forward:
    """Write the classifier's forward pass.

    Args:
        feeds: None writes the classifier's own nodes under their own names (the main forward
            pass); otherwise a copy of the nodes downstream of these tensors (classifier name ->
            the tensor that replaces it), with fresh names.
        hint: what the copy's names start with.
        switches: also return MaxPool's Indices (a backward pass will run through this copy).
    """
    forward = Forward(names=dict(feeds or {}))
    data = set(cls.data_nodes)
    for index, node in enumerate(cls.nodes):
        pool = node.op_type == "MaxPool" and index in data
        if feeds is None:  # the classifier's own nodes, as they are
            if pool and switches:
                indices = b.fresh("switches")
                b.add(_maxpool_node(cls, b, index, node, node.input[0], node.output[0], indices))
                forward.indices[index] = indices
            else:
                b.add(node)
            continue
        if not any(n in forward.names for n in node.input if n):
            continue  # upstream of the fed tensors (the preprocessing) or constant
        outputs = []
        for name in node.output:
            if name and cls.used(name):
                forward.names[name] = b.fresh(f"{hint}/{name}")
                outputs.append(forward.names[name])
            else:
                outputs.append("")
        inputs = [forward[n] if n else "" for n in node.input]
        if pool:
            indices = b.fresh(f"{hint}/switches") if switches else None
            b.add(_maxpool_node(cls, b, index, node, inputs[0], outputs[0], indices))
            if indices:
                forward.indices[index] = indices
            continue
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        del copy.input[:]
        copy.input.extend(inputs)
        del copy.output[:]
        copy.output.extend(outputs)
        copy.name = b.fresh(f"{hint}/{node.name or node.op_type}")
        b.add(copy)
    return forward


def _maxpool_node(
    cls: Classifier,
    b: GraphBuilder,
    index: int,
    node: onnx.NodeProto,
    source: str,
    output: str,
    indices: str | None,
) -> onnx.NodeProto:
    """The MaxPool with explicit pads and, when asked, its row-major Indices (the switches)."""
    outputs = [output] + ([indices] if indices else [])
    made = helper.make_node(
        "MaxPool",
        [source],
        outputs,
        name=b.fresh(node.name or "maxpool"),
        **cls.params[index]["attrs"],
    )
    made.metadata_props.extend(node.metadata_props)
    return made


Grads = list[str | None]
Rule = Callable[["Backward", int, onnx.NodeProto, Grads], list[tuple[str, str]]]


class Backward:
    """Backward passes through one forward copy with one ReLU rule.

    Args:
        cls: the classifier.
        b: the graph being built.
        forward: the forward copy whose activations (ReLU inputs, switches) the rules read.
        rule: `gradient`, `deconvnet` or `guided-backprop`.
        method: the method's name, for messages.

    After `run`, `saw_maxpool` and `saw_activation` say what the pass went through (for the
    input-independence warnings).
    """

    def __init__(
        self, cls: Classifier, b: GraphBuilder, forward: Forward, rule: str, method: str
    ) -> None:
        self.cls = cls
        self.b = b
        self.forward = forward
        self.rule = rule
        self.method = method
        self.saw_maxpool = False
        self.saw_activation = False

    def run(self, seeds: dict[str, str], wanted: Iterable[str]) -> dict[str, str | None]:
        """The gradients of `wanted` (classifier tensor names) given seed gradients of some
        tensors (classifier name -> gradient tensor); None where nothing reaches one."""
        cls = self.cls
        wanted = list(wanted)
        ancestors = self._ancestors(seeds)
        downstream = self._downstream(wanted)
        contributions: dict[str, list[str]] = defaultdict(list)
        for name, seed in seeds.items():
            contributions[name].append(seed)
        totals: dict[str, str] = {}

        def total(name: str) -> str | None:
            if name in totals:
                return totals[name]
            parts = contributions.get(name)
            if not parts:
                return None
            totals[name] = parts[0] if len(parts) == 1 else self.b.op("Sum", parts, hint="grad")
            return totals[name]

        head = set(cls.head)
        for index in reversed(cls.data_nodes):
            node = cls.nodes[index]
            if index not in ancestors or index in head:
                continue
            if not any(n in downstream for n in node.input if n):
                continue
            grads = [total(n) if n in cls.infos else None for n in node.output]
            if all(g is None for g in grads):
                continue
            rule = RULES.get(node.op_type)
            if rule is None:
                raise refuse(node, f"{self.method} cannot pass a gradient back through it")
            for name, grad in rule(self, index, node, grads):
                if name in downstream:
                    contributions[name].append(grad)
        return {name: total(name) for name in wanted}

    def _ancestors(self, seeds: dict[str, str]) -> set[int]:
        cls = self.cls
        found: set[int] = set()
        stack = list(seeds)
        while stack:
            name = stack.pop()
            index = cls.producer.get(name)
            if index is None or index in found or name not in cls.infos:
                continue
            found.add(index)
            stack.extend(n for n in cls.nodes[index].input if n in cls.infos)
        return found

    def _downstream(self, wanted: list[str]) -> set[str]:
        cls = self.cls
        found = set(wanted)
        for index in cls.data_nodes:
            node = cls.nodes[index]
            if any(n in found for n in node.input if n):
                found.update(n for n in node.output if n in cls.infos)
        return found

    # -- helpers the rules share ---------------------------------------------------------------

    def f(self, name: str) -> str:
        """The forward copy's tensor for a classifier tensor."""
        return self.forward[name]

    def info(self, name: str) -> TensorInfo:
        return self.cls.infos[name]

    def zero(self, dtype: int) -> str:
        return self.b.const(np.zeros((), dtype=numpy_type(dtype)), hint="zero")

    def scalar(self, value: float, dtype: int) -> str:
        return self.b.const(np.array(value, dtype=numpy_type(dtype)), hint="k")

    def shape_of(self, name: str) -> str:
        return self.b.op("Shape", [self.f(name)])

    def smooth(self, node: onnx.NodeProto) -> None:
        """Refuse a smooth activation under a ReLU rule."""
        self.saw_activation = True
        if self.rule != GRADIENT:
            raise refuse(
                node,
                f"{self.method} is defined for ReLU only and would pass the plain gradient back "
                "through this activation; use gradient, input-x-gradient, integrated-gradients "
                "or grad-cam on this model",
            )

    def unbroadcast(self, grad: str, out: TensorInfo, shape: tuple[int | None, ...]) -> str:
        """Sum `grad` (shaped `out`) over the axes a forward broadcast expanded `shape` along."""
        if tuple(shape) == out.shape:
            return grad
        lead = out.rank - len(shape)
        axes = list(range(lead)) + [
            lead + j for j, d in enumerate(shape) if d == 1 and out.shape[lead + j] != 1
        ]
        if axes:
            grad = self.b.op("ReduceSum", [grad, self.b.ints(axes)], keepdims=1)
        if lead:
            grad = self.b.op("Squeeze", [grad, self.b.ints(list(range(lead)))])
        return grad


# -- the rules ----------------------------------------------------------------------------------


def _pass(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    return [(node.input[0], grads[0])] if grads[0] else []


def _relu(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    (g,) = grads[:1]
    assert g is not None
    bw.saw_activation = True
    b, x = bw.b, bw.f(node.input[0])
    if bw.rule == DECONVNET:
        return [(node.input[0], b.op("Relu", [g], hint="deconv"))]
    dtype = bw.info(node.input[0]).dtype
    positive = b.op("Greater", [x, bw.zero(dtype)], hint="active")
    if bw.rule == GUIDED:
        g = b.op("Relu", [g], hint="guided")
    return [(node.input[0], b.op("Where", [positive, g, bw.zero(dtype)], hint="relu_grad"))]


def _sigmoid(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    bw.smooth(node)
    b, y, g = bw.b, bw.f(node.output[0]), grads[0]
    dtype = bw.info(node.output[0]).dtype
    one_minus = b.op("Sub", [bw.scalar(1.0, dtype), y])
    return [(node.input[0], b.op("Mul", [b.op("Mul", [g, one_minus]), y]))]


def _tanh(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    bw.smooth(node)
    b, y, g = bw.b, bw.f(node.output[0]), grads[0]
    dtype = bw.info(node.output[0]).dtype
    return [
        (node.input[0], b.op("Mul", [g, b.op("Sub", [bw.scalar(1.0, dtype), b.op("Mul", [y, y])])]))
    ]


def _leaky(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    bw.smooth(node)
    b, x, g = bw.b, bw.f(node.input[0]), grads[0]
    dtype = bw.info(node.input[0]).dtype
    alpha = float(attributes(node).get("alpha", 0.01))
    positive = b.op("Greater", [x, bw.zero(dtype)])
    return [
        (node.input[0], b.op("Where", [positive, g, b.op("Mul", [g, bw.scalar(alpha, dtype)])]))
    ]


def _clip(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    bw.smooth(node)
    b, x, g = bw.b, bw.f(node.input[0]), grads[0]
    dtype = bw.info(node.input[0]).dtype
    inside = None
    for index, compare in ((1, "Greater"), (2, "Less")):
        bound = node.input[index] if len(node.input) > index and node.input[index] else None
        if bound is None:
            continue
        if not bw.cls.is_const(bound):
            raise refuse(node, "its bounds must be constants")
        test = b.op(compare, [x, bound])
        inside = test if inside is None else b.op("And", [inside, test])
    if inside is None:
        return [(node.input[0], g)]
    return [(node.input[0], b.op("Where", [inside, g, bw.zero(dtype)]))]


def _gelu(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    bw.smooth(node)
    if attributes(node).get("approximate", "none") != "none":
        raise refuse(node, "the tanh approximation of GELU is not supported")
    b, x, g = bw.b, bw.f(node.input[0]), grads[0]
    dtype = bw.info(node.input[0]).dtype
    # d/dx x*Phi(x) = Phi(x) + x*phi(x), as PyTorch's GeluBackward computes it
    cdf = b.op(
        "Mul",
        [
            bw.scalar(0.5, dtype),
            b.op(
                "Add",
                [
                    bw.scalar(1.0, dtype),
                    b.op("Erf", [b.op("Mul", [x, bw.scalar(float(np.sqrt(0.5)), dtype)])]),
                ],
            ),
        ],
    )
    pdf = b.op(
        "Mul",
        [
            b.op("Exp", [b.op("Mul", [b.op("Mul", [x, x]), bw.scalar(-0.5, dtype)])]),
            bw.scalar(float(1 / np.sqrt(2 * np.pi)), dtype),
        ],
    )
    return [(node.input[0], b.op("Mul", [g, b.op("Add", [cdf, b.op("Mul", [x, pdf])])]))]


def _erf(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    bw.smooth(node)
    b, x, g = bw.b, bw.f(node.input[0]), grads[0]
    dtype = bw.info(node.input[0]).dtype
    slope = b.op(
        "Mul",
        [
            b.op("Exp", [b.op("Neg", [b.op("Mul", [x, x])])]),
            bw.scalar(float(2 / np.sqrt(np.pi)), dtype),
        ],
    )
    return [(node.input[0], b.op("Mul", [g, slope]))]


def _neg(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    return [(node.input[0], bw.b.op("Neg", [grads[0]]))]


def _softmax(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    raise refuse(node, "a softmax inside the network (not the final one) is not supported")


def _cast(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    dtype = bw.info(node.input[0]).dtype
    return [(node.input[0], bw.b.op("Cast", [grads[0]], to=dtype))]


def _arithmetic(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    b, g = bw.b, grads[0]
    assert g is not None
    out = bw.info(node.output[0])
    data = bw.cls.params[i]["data"]
    result = []
    for k, name in enumerate(node.input[:2]):
        if not data[k]:
            continue
        other = node.input[1 - k]
        if node.op_type == "Add" or (node.op_type == "Sub" and k == 0):
            grad = g
        elif node.op_type == "Sub":
            grad = b.op("Neg", [g])
        elif node.op_type == "Mul":
            grad = b.op("Mul", [g, bw.f(other)])
        else:  # Div, by a constant (the analysis refuses a computed divisor)
            grad = b.op("Div", [g, other])
        result.append((name, bw.unbroadcast(grad, out, bw.info(name).shape)))
    return result


def _conv(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    p = bw.cls.params[i]
    grad = bw.b.op(
        "ConvTranspose",
        [grads[0], node.input[1]],
        hint="conv_grad",
        kernel_shape=p["kernel"],
        strides=p["strides"],
        dilations=p["dilations"],
        group=p["group"],
        pads=p["pads"],
        output_padding=p["output_padding"],
    )
    return [(node.input[0], grad)]


def _maxpool(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    bw.saw_maxpool = True
    b, g = bw.b, grads[0]
    x = bw.f(node.input[0])
    dtype = bw.info(node.input[0]).dtype
    indices = bw.forward.indices[i]
    flat = b.ints([-1])
    updates = b.op("Reshape", [g, flat])
    work = _scatter_type(dtype)
    if work != dtype:
        updates = b.op("Cast", [updates], to=work)
    size = b.op("Reshape", [b.op("Size", [x]), b.ints([1])])
    zeros = b.op("ConstantOfShape", [size], value=_zero_tensor(work))
    routed = b.op(
        "ScatterElements",
        [zeros, b.op("Reshape", [indices, flat]), updates],
        hint="switch_grad",
        axis=0,
        reduction="add",
    )
    if work != dtype:
        routed = b.op("Cast", [routed], to=dtype)
    return [(node.input[0], b.op("Reshape", [routed, bw.shape_of(node.input[0])]))]


def _averagepool(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    b, p = bw.b, bw.cls.params[i]
    dtype = bw.info(node.input[0]).dtype
    divisor = b.const(p["divisor"][None, None], dtype, hint="divisor")
    ones = b.const(np.ones((p["channels"], 1, *p["kernel"])), dtype, hint="window")
    grad = b.op(
        "ConvTranspose",
        [b.op("Div", [grads[0], divisor]), ones],
        hint="avgpool_grad",
        kernel_shape=p["kernel"],
        strides=p["strides"],
        group=p["channels"],
        pads=p["pads"],
        output_padding=p["output_padding"],
    )
    return [(node.input[0], grad)]


def _mean(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    b, p, g = bw.b, bw.cls.params[i], grads[0]
    assert g is not None
    if not p["axes"]:
        return [(node.input[0], g)]
    if not p["keepdims"]:
        g = b.op("Unsqueeze", [g, b.ints(p["axes"])])
    g = b.op("Expand", [g, bw.shape_of(node.input[0])])
    if node.op_type != "ReduceSum":
        g = b.op("Div", [g, bw.scalar(float(p["count"]), bw.info(node.input[0]).dtype)])
    return [(node.input[0], g)]


def _batchnorm(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    info = bw.info(node.input[0])
    factor = bw.cls.params[i]["factor"].reshape(-1, *[1] * (info.rank - 2))
    return [(node.input[0], bw.b.op("Mul", [grads[0], bw.b.const(factor, info.dtype)]))]


def _gemm(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    p = bw.cls.params[i]
    attrs = {"transB": 0 if p["transB"] else 1}
    if p["alpha"] != 1.0:
        attrs["alpha"] = p["alpha"]
    return [(node.input[0], bw.b.op("Gemm", [grads[0], node.input[1]], hint="gemm_grad", **attrs))]


def _matmul(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    b = bw.b
    if bw.info(node.input[0]).rank == 2:
        return [(node.input[0], b.op("Gemm", [grads[0], node.input[1]], transB=1))]
    weight_t = b.op("Transpose", [node.input[1]], perm=[1, 0])
    return [(node.input[0], b.op("MatMul", [grads[0], weight_t]))]


def _reshape(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    return [(node.input[0], bw.b.op("Reshape", [grads[0], bw.shape_of(node.input[0])]))]


def _transpose(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    perm = bw.cls.params[i]["perm"]
    inverse = [perm.index(axis) for axis in range(len(perm))]
    return [(node.input[0], bw.b.op("Transpose", [grads[0]], perm=inverse))]


def _concat(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    p = bw.cls.params[i]
    if len(node.input) == 1:
        return [(node.input[0], grads[0])]
    parts = bw.b.op(
        "Split", [grads[0], bw.b.ints(p["sizes"])], outputs=len(p["sizes"]), axis=p["axis"]
    )
    return list(zip(node.input, parts, strict=True))


def _pad(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    pads = [-p for p in bw.cls.params[i]["pads"]]
    return [(node.input[0], bw.b.op("Pad", [grads[0], bw.b.ints(pads)], mode="constant"))]


def _slice(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    b, g = bw.b, grads[0]
    assert g is not None
    info = bw.info(node.input[0])
    rank = info.rank
    for axis, picked in reversed(bw.cls.params[i]["selections"]):
        size = int(info.shape[axis])  # type: ignore[arg-type]
        if picked == list(range(picked[0], picked[-1] + 1)):
            pads = [0] * 2 * rank
            pads[axis], pads[axis + rank] = picked[0], size - 1 - picked[-1]
            g = b.op("Pad", [g, b.ints(pads)], mode="constant")
            continue
        index_shape = [1] * rank
        index_shape[axis] = len(picked)
        shape = b.op("Shape", [g])
        index = b.op(
            "Expand",
            [b.const(np.array(picked, np.int64).reshape(index_shape), hint="picked"), shape],
        )
        full = b.op("ScatterElements", [shape, b.ints([axis]), b.ints([size])], axis=0)
        zeros = b.op("ConstantOfShape", [full], value=_zero_tensor(info.dtype))
        g = b.op("ScatterElements", [zeros, index, g], hint="slice_grad", axis=axis)
    return [(node.input[0], g)]


def _gathernd(bw: Backward, i: int, node: onnx.NodeProto, grads: Grads) -> list[tuple[str, str]]:
    """GatherND with constant indices is a constant linear map of its leading axes: its adjoint
    is one MatMul with the 0/1 matrix of which gathered slice came from which input slice (no
    scatter-add: ONNX Runtime's ScatterND with reduction="add" loses updates between threads
    when indices repeat, as adaptive pooling's do)."""
    b, g = bw.b, grads[0]
    assert g is not None
    info = bw.info(node.input[0])
    indices = bw.cls.params[i]["indices"]
    depth = indices.shape[-1]
    picked = indices.reshape(-1, depth)
    sources = np.ravel_multi_index(tuple(picked.T), tuple(info.shape[:depth]))  # type: ignore[arg-type]
    adjoint = np.zeros((int(np.prod(info.shape[:depth])), len(picked)))  # type: ignore[arg-type]
    np.add.at(adjoint, (sources, np.arange(len(picked))), 1.0)
    flat = b.op("Reshape", [g, b.ints([len(picked), -1])])
    summed = b.op("MatMul", [b.const(adjoint, info.dtype, hint="gather_adjoint"), flat])
    return [(node.input[0], b.op("Reshape", [summed, bw.shape_of(node.input[0])]))]


def _scatter_type(dtype: int) -> int:
    """The type scatter-adds run in: ONNX Runtime's CPU kernels add float32 and float64, not
    float16, whose gradients are added in float32 and cast back."""
    return TensorProto.FLOAT if dtype == TensorProto.FLOAT16 else dtype


def _zero_tensor(dtype: int) -> onnx.TensorProto:
    """ConstantOfShape's `value` attribute: one zero of `dtype`."""
    return helper.make_tensor("", dtype, [1], np.zeros(1, numpy_type(dtype)).tobytes(), raw=True)


RULES: dict[str, Rule] = {
    "Identity": _pass,
    "Dropout": _pass,
    "Relu": _relu,
    "Sigmoid": _sigmoid,
    "Tanh": _tanh,
    "LeakyRelu": _leaky,
    "Clip": _clip,
    "Gelu": _gelu,
    "Erf": _erf,
    "Neg": _neg,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "Cast": _cast,
    "Add": _arithmetic,
    "Sub": _arithmetic,
    "Mul": _arithmetic,
    "Div": _arithmetic,
    "Conv": _conv,
    "MaxPool": _maxpool,
    "AveragePool": _averagepool,
    "GlobalAveragePool": _mean,
    "ReduceMean": _mean,
    "ReduceSum": _mean,
    "BatchNormalization": _batchnorm,
    "Gemm": _gemm,
    "MatMul": _matmul,
    "Reshape": _reshape,
    "Flatten": _reshape,
    "Squeeze": _reshape,
    "Unsqueeze": _reshape,
    "Transpose": _transpose,
    "Concat": _concat,
    "Pad": _pad,
    "Slice": _slice,
    "GatherND": _gathernd,
}

"""A classifier's ONNX graph as the transformation reads it: which input is the image, which
tensor is the explained score, what every image-dependent tensor's shape is, and which values
are constants.

The reading works from the ONNX model alone (no cnnzoo metadata needed), so any ONNX CNN built
from the supported operators (`cnnzoo.interpret.graphs.shapes`) can be explained:

- the image is the graph's one input that is not an initializer: `[N, C, H, W]` with a dynamic
  batch axis and static C, H, W; float (FP32, FP16) or integer pixels (UINT8);
- the explained score is the graph's one output, or, where the output is a Softmax or LogSoftmax
  (possibly followed by Identity or Cast), the logits before it;
- the explained tensor (the one the attribution map is of) is the image itself for a float
  image; for integer pixels, which have no gradient, it is the float image the graph's leading
  preprocessing makes of them (a Cast, then elementwise arithmetic with constants, as the
  exporter writes with `--input-dtype uint8`): the image the network proper sees, the same tensor
  the PyTorch reference explains.

Graphs below opset 18 are upgraded with onnx's version converter and local functions are inlined
first, so the backward rules only ever meet one spelling of each operator.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from cnnzoo.errors import UnsupportedModel
from cnnzoo.interpret.graphs.shapes import (
    ANALYSERS,
    FLOAT_TYPES,
    INT64_MAX,
    TensorInfo,
    attributes,
    refuse,
    slice_indices,
)

__all__ = ["MIN_OPSET", "RESERVED_NAMES", "Classifier"]

MIN_OPSET = 18
# Names the explanation graph gives its own inputs and outputs.
RESERVED_NAMES = frozenset(
    {
        "attribution",
        "logits",
        "target",
        "target_used",
        "layer",
        "channel",
        "position",
        "unit_position",
        "unit_activation",
    }
)
_DEFAULT_DOMAINS = ("", "ai.onnx")
_RANDOM = frozenset(
    {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)
_SUBGRAPHS = frozenset({"If", "Loop", "Scan"})
_HEAD = frozenset({"Identity", "Cast"})
_PREPROCESS = frozenset({"Add", "Sub", "Mul", "Div"})
_INT_IMAGE_TYPES = frozenset(
    {
        TensorProto.UINT8,
        TensorProto.INT8,
        TensorProto.UINT16,
        TensorProto.INT16,
        TensorProto.INT32,
        TensorProto.INT64,
    }
)


def _opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    if not versions:
        raise UnsupportedModel("the model imports no version of the default ONNX operator set")
    return max(versions)


def _normalised(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with local functions inlined and at least opset `MIN_OPSET`; the caller's
    model is never modified (a copy is made only where something changes)."""
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    if _opset(model) < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as err:  # the converter raises many kinds of errors
            raise UnsupportedModel(
                f"the model's opset {_opset(model)} could not be upgraded to {MIN_OPSET}: "
                f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
            ) from None
    return model


class Classifier:
    """The parts of a classifier's graph the transformation needs (read-only; the model given
    is not modified).

    Attributes:
        model: the (normalised) model.
        opset: its default-domain opset.
        nodes: the nodes that contribute to the output, in topological order (copies, with any
            tensor named like one of the explanation graph's own inputs/outputs renamed).
        image: the image input's name; `image_info` its shape and type; `batch_dim` the name of
            its batch dimension (for the explanation graph's inputs and outputs).
        output: the graph's output; `score`: the explained score `[N, K]` (see the module doc).
        explained: the tensor the attribution map is of (see the module doc).
        infos: shape and type of every tensor computed from the image.
        params: per node index, what its backward rule needs (`shapes.Analysis.params`).
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = _normalised(model)
        self.opset = _opset(self.model)
        graph = self.model.graph
        self._initializers = {t.name: t for t in graph.initializer}
        if graph.sparse_initializer:
            raise UnsupportedModel("the model has sparse initializers; densify them first")
        inputs = [i for i in graph.input if i.name not in self._initializers]
        if len(inputs) != 1:
            raise UnsupportedModel(
                f"the graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); an "
                "image classifier has exactly one, the image"
            )
        if len(graph.output) != 1:
            raise UnsupportedModel(
                f"the graph has {len(graph.output)} outputs; a classifier has one, the scores"
            )
        self._renames = self._reserved_renames(graph, inputs[0].name)
        self.image = inputs[0].name
        self.output = self._renamed(graph.output[0].name)
        self.image_info, self.batch_dim = _image_input(inputs[0])
        nodes = [self._copy(node) for node in graph.node]
        self.nodes = _live(_topological(nodes, set(self._initializers) | {self.image}), self.output)
        self.producer = {out: i for i, node in enumerate(self.nodes) for out in node.output if out}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for i, node in enumerate(self.nodes):
            for name in node.input:
                if name:
                    self.consumers[name].append(i)
        self.constants: set[str] = set(self._initializers)
        self._values: dict[str, np.ndarray] = {}
        self.infos: dict[str, TensorInfo] = {self.image: self.image_info}
        self.shape_values: dict[str, np.ndarray] = {}
        self.params: dict[int, dict[str, Any]] = {}
        self.data_nodes: list[int] = []  # compute image-dependent tensors (have backward rules)
        self.dependent: list[int] = []  # read the image, directly or not (runtime shapes too)
        self._analyse()
        self.score, self.head = self._find_score()
        self.explained = self._find_explained()

    # -- names ---------------------------------------------------------------------------------

    def _reserved_renames(self, graph: onnx.GraphProto, image: str) -> dict[str, str]:
        """New names for tensors named like the explanation graph's inputs and outputs (the
        classifier's own output may keep the name `logits`, which it is)."""
        if image in RESERVED_NAMES:
            raise UnsupportedModel(
                f"the image input is named {image!r}, a name the explanation graph needs for "
                f"one of its own inputs or outputs ({', '.join(sorted(RESERVED_NAMES))})"
            )
        names = set(self._initializers) | {o for n in graph.node for o in n.output}
        taken = names | {i.name for i in graph.input}
        renames = {}
        for name in sorted(names & RESERVED_NAMES):
            output = graph.output[0]
            if (
                name == "logits" == output.name
                and output.type.tensor_type.elem_type == TensorProto.FLOAT
            ):
                continue  # the classifier's FP32 output is the explanation graph's `logits`
            index, new = 0, f"{name}__0"
            while new in taken:
                index += 1
                new = f"{name}__{index}"
            taken.add(new)
            renames[name] = new
        return renames

    def _renamed(self, name: str) -> str:
        return self._renames.get(name, name)

    def _copy(self, node: onnx.NodeProto) -> onnx.NodeProto:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        if self._renames:
            for i, name in enumerate(copy.input):
                copy.input[i] = self._renamed(name)
            for i, name in enumerate(copy.output):
                copy.output[i] = self._renamed(name)
        return copy

    def initializers(self) -> list[onnx.TensorProto]:
        """The classifier's initializers (with renames applied, copied only when renamed)."""
        out = []
        for name, tensor in self._initializers.items():
            if name in self._renames:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(self._initializers[name])
                tensor.name = self._renames[name]
            out.append(tensor)
        return out

    def tensor_names(self) -> set[str]:
        """Every name the classifier's graph uses."""
        names = {self.image, self.output} | {self._renamed(n) for n in self._initializers}
        for node in self.nodes:
            names.update(n for n in node.input if n)
            names.update(n for n in node.output if n)
        return names

    def network(self) -> onnx.ModelProto:
        """The classifier from the explained tensor on: the model itself for a float image;
        for integer pixels, the network after the graph's preprocessing, taking the float image
        (for checks that perturb the explained tensor, which integers cannot)."""
        if self.explained == self.image:
            return self.model
        chain: set[int] = set()
        name = self.explained
        while name in self.producer and name != self.image:
            index = self.producer[name]
            chain.add(index)
            name = (
                self.nodes[index].input[0]
                if self.nodes[index].op_type == "Cast"
                else next(n for n in self.nodes[index].input if n in self.infos)
            )
        nodes = [node for i, node in enumerate(self.nodes) if i not in chain]
        info = self.infos[self.explained]
        image = onnx.helper.make_tensor_value_info(
            self.explained, info.dtype, [self.batch_dim, *info.sizes]
        )
        graph = onnx.helper.make_graph(
            nodes,
            f"{self.model.graph.name or 'classifier'}.network",
            [image],
            [self.model.graph.output[0]],
            initializer=self.initializers(),
        )
        return onnx.helper.make_model(
            graph,
            opset_imports=[onnx.helper.make_opsetid("", self.opset)],
            ir_version=self.model.ir_version,
        )

    # -- constants -----------------------------------------------------------------------------

    def is_const(self, name: str) -> bool:
        return name in self.constants

    def const(self, name: str) -> np.ndarray:
        """The value of a constant tensor (evaluated with onnx's reference runtime if a node
        computes it)."""
        if name in self._values:
            return self._values[name]
        original = {v: k for k, v in self._renames.items()}.get(name, name)
        if original in self._initializers:
            value = numpy_helper.to_array(self._initializers[original])
        else:
            node = self.nodes[self.producer[name]]
            if node.op_type == "Constant":
                value = _constant_value(node)
            else:
                from onnx.reference import ReferenceEvaluator  # only for folded constants

                feeds = {n: self.const(n) for n in node.input if n}
                evaluator = ReferenceEvaluator(node, opsets={"": self.opset})
                outputs = evaluator.run(None, feeds)
                for out_name, out_value in zip(node.output, outputs, strict=False):
                    self._values[out_name] = np.asarray(out_value)
                return self._values[name]
        self._values[name] = value
        return value

    def const_shape(self, name: str) -> tuple[int, ...]:
        original = {v: k for k, v in self._renames.items()}.get(name, name)
        if original in self._initializers:
            return tuple(self._initializers[original].dims)
        return tuple(self.const(name).shape)

    # -- the context the shape analysers read --------------------------------------------------

    def info(self, name: str) -> TensorInfo | None:
        return self.infos.get(name)

    def shape_value(self, name: str) -> np.ndarray | None:
        return self.shape_values.get(name)

    def used(self, name: str) -> bool:
        return bool(self.consumers.get(name)) or name == self.output

    # -- analysis ------------------------------------------------------------------------------

    def _analyse(self) -> None:
        for i, node in enumerate(self.nodes):
            if node.domain not in _DEFAULT_DOMAINS:
                raise refuse(node, f"belongs to the custom domain {node.domain!r}")
            if node.op_type in _SUBGRAPHS:
                raise refuse(node, "has subgraphs (control flow); not supported")
            inputs = [name for name in node.input if name]
            unknown = [
                n
                for n in inputs
                if n not in self.infos and n not in self.shape_values and n not in self.constants
            ]
            if unknown:
                raise refuse(node, f"reads {unknown[0]!r}, which no node computes")
            data = any(n in self.infos for n in inputs)
            shaped = any(n in self.shape_values for n in inputs)
            if not data and not shaped:
                if node.op_type in _RANDOM:
                    raise refuse(node, "is random; explanations must be deterministic")
                self.constants.update(name for name in node.output if name)
                continue
            self.dependent.append(i)
            if not data:
                self._shape_arithmetic(node)
                continue
            if node.op_type in _RANDOM:
                raise refuse(node, "is random; explanations must be deterministic")
            analyse = ANALYSERS.get(node.op_type)
            if analyse is None:
                raise refuse(
                    node,
                    "is not supported by the transformation (supported: "
                    f"{', '.join(sorted(k for k in ANALYSERS if k not in ('Shape', 'Size')))})",
                )
            integer_image = self.image_info.dtype in _INT_IMAGE_TYPES
            if integer_image and self.image in inputs and node.op_type != "Cast":
                raise refuse(
                    node,
                    "reads the integer image directly; only a Cast to float "
                    "may (the preprocessing the exporter writes)",
                )
            result = analyse(self, node)
            for name, out in zip(node.output, result.outputs, strict=False):
                if not name or out is None:
                    continue
                if isinstance(out, TensorInfo):
                    if out.dtype not in FLOAT_TYPES:
                        raise refuse(node, "computes an integer tensor from the image")
                    self.infos[name] = out
                elif None in list(out):
                    self.shape_values[name] = out
                else:  # a runtime shape without the batch size is a constant
                    self._values[name] = np.array(list(out), dtype=np.int64)
                    self.constants.add(name)
            self.params[i] = result.params
            if any(name in self.infos for name in node.output):
                self.data_nodes.append(i)

    def _shape_arithmetic(self, node: onnx.NodeProto) -> None:
        """Follow the few operators that pass runtime shapes on (the exporters' way of spelling
        `x.view(x.size(0), -1)`), keeping the batch size as `None`."""
        values = [self.shape_values.get(n) for n in node.input]
        op = node.op_type
        value: np.ndarray
        source = next(v for v in values if v is not None)
        if op in ("Identity", "Cast"):
            value = source
        elif op == "Gather" and values[0] is not None and self.is_const(node.input[1]):
            if attributes(node).get("axis", 0) != 0:
                raise refuse(node, "gathers from a runtime shape along an axis other than 0")
            value = np.asarray(values[0][self.const(node.input[1]).astype(np.int64)], dtype=object)
        elif (
            op == "Slice"
            and values[0] is not None
            and all(self.is_const(n) for n in node.input[1:] if n)
        ):
            starts, ends = (int(self.const(n).reshape(-1)[0]) for n in node.input[1:3])
            steps = int(self.const(node.input[4]).reshape(-1)[0]) if len(node.input) > 4 else 1
            value = values[0][slice_indices(len(values[0]), starts, min(ends, INT64_MAX), steps)]
        elif op == "Concat":
            parts = [
                v if v is not None else self.const(n).astype(object).reshape(-1)
                for v, n in zip(values, node.input, strict=True)
            ]
            value = np.concatenate([np.asarray(p, dtype=object).reshape(-1) for p in parts])
        elif op in ("Unsqueeze", "Squeeze") and values[0] is not None:
            value = values[0].reshape(-1) if op == "Unsqueeze" else values[0].reshape(-1)
        else:
            raise refuse(
                node,
                "computes with the batch size read from a runtime shape in a way the "
                "transformation cannot follow",
            )
        if None in list(value.reshape(-1)):
            self.shape_values[node.output[0]] = value
        else:
            self._values[node.output[0]] = np.array(list(value.reshape(-1)), dtype=np.int64)
            self.constants.add(node.output[0])

    def _find_score(self) -> tuple[str, list[int]]:
        """The explained score and the nodes after it (a final Softmax/LogSoftmax and the
        Identity/Cast nodes around it)."""
        name, head = self.output, []
        score = self.output
        while name in self.producer:
            index = self.producer[name]
            node = self.nodes[index]
            if node.op_type in _HEAD:
                head.append(index)
                name = node.input[0]
                continue
            if node.op_type in ("Softmax", "LogSoftmax"):
                info = self.infos[node.input[0]]
                axis = int(attributes(node).get("axis", -1)) % max(info.rank, 1)
                if info.rank != 2 or axis != 1:
                    raise refuse(node, "a final softmax must run over the classes of [N, K] scores")
                head.append(index)
                score = node.input[0]
            break
        if score == self.output:
            head = []
        info = self.infos.get(score)
        if info is None or info.rank != 2 or info.batch_axis != 0:
            shape = "constant" if info is None else list(info.shape)
            raise UnsupportedModel(
                f"the graph's output {self.output!r} is not [N, K] class scores (it is {shape})"
            )
        return score, head

    def _find_explained(self) -> str:
        if self.image_info.dtype in FLOAT_TYPES:
            return self.image
        name = self.image
        uses = self.consumers.get(name, [])
        if len(uses) != 1 or self.nodes[uses[0]].op_type != "Cast":
            raise UnsupportedModel(
                f"the integer image input {self.image!r} must be read by exactly one Cast to "
                "float (the preprocessing the exporter writes), which the attribution is taken "
                "after"
            )
        name = self.nodes[uses[0]].output[0]
        while True:
            uses = self.consumers.get(name, [])
            if len(uses) != 1:
                break
            node = self.nodes[uses[0]]
            others = [n for n in node.input if n != name]
            if (
                node.op_type not in _PREPROCESS
                or len(others) != 1
                or not self.is_const(others[0])
                or self.infos[node.output[0]].shape != self.infos[name].shape
            ):
                break
            name = node.output[0]
        return name


def _constant_value(node: onnx.NodeProto) -> np.ndarray:
    attrs = {a.name: a for a in node.attribute}
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"].t)
    for key, dtype in (("value_float", np.float32), ("value_int", np.int64)):
        if key in attrs:
            return np.array(onnx.helper.get_attribute_value(attrs[key]), dtype=dtype)
    for key, dtype in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(onnx.helper.get_attribute_value(attrs[key]), dtype=dtype)
    raise refuse(node, "is a Constant of a kind not supported (sparse or string)")


def _image_input(value: onnx.ValueInfoProto) -> tuple[TensorInfo, str]:
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise UnsupportedModel(f"the input {value.name!r} is not a tensor")
    tensor = value.type.tensor_type
    dtype = tensor.elem_type
    if dtype not in FLOAT_TYPES and dtype not in _INT_IMAGE_TYPES:
        raise UnsupportedModel(
            f"the input {value.name!r} is {TensorProto.DataType.Name(dtype)}; an image is float "
            "or integer pixels"
        )
    dims = list(tensor.shape.dim)
    if len(dims) != 4:
        raise UnsupportedModel(
            f"the input {value.name!r} has {len(dims)} dimensions; explanations take images "
            "[N, C, H, W]"
        )
    batch = dims[0]
    if batch.HasField("dim_value") and batch.dim_value > 0:
        raise UnsupportedModel(
            f"the input {value.name!r} has a fixed batch size {batch.dim_value}; explanation "
            "graphs need a dynamic batch axis (integrated gradients and occlusion run many "
            "copies of an image as one batch); export the classifier with a dynamic batch axis"
        )
    sizes = []
    for i, dim in enumerate(dims[1:], 1):
        if not dim.HasField("dim_value") or dim.dim_value < 1:
            raise UnsupportedModel(
                f"dimension {i} of the input {value.name!r} is not fixed; explanation graphs "
                "need static channel, height and width (the backward pass is built from them)"
            )
        sizes.append(dim.dim_value)
    name = batch.dim_param if batch.HasField("dim_param") and batch.dim_param else "N"
    return TensorInfo((None, *sizes), dtype), name


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """`nodes` in an order where every input is computed before it is read (the given order
    where it already is, as exporters write it)."""
    known = set(available)
    ordered = True
    for node in nodes:
        if any(n and n not in known for n in node.input):
            ordered = False
            break
        known.update(node.output)
    if ordered:
        return nodes
    producers = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    waiting = {
        i: {producers[n] for n in node.input if n in producers} for i, node in enumerate(nodes)
    }
    done: list[int] = []
    ready = sorted(i for i, deps in waiting.items() if not deps)
    users: dict[int, list[int]] = defaultdict(list)
    for i, deps in waiting.items():
        for d in deps:
            users[d].append(i)
    while ready:
        i = ready.pop(0)
        done.append(i)
        for user in users[i]:
            waiting[user].discard(i)
            if not waiting[user] and user not in done and user not in ready:
                ready.append(user)
    if len(done) != len(nodes):
        stuck = next(nodes[i] for i in range(len(nodes)) if i not in set(done))
        raise refuse(stuck, "is part of a cycle or reads a tensor nothing computes")
    return [nodes[i] for i in done]


def _live(nodes: list[onnx.NodeProto], output: str) -> list[onnx.NodeProto]:
    """The nodes the output depends on."""
    producers = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    needed: set[int] = set()
    stack = [output]
    while stack:
        name = stack.pop()
        index = producers.get(name)
        if index is None or index in needed:
            continue
        needed.add(index)
        stack.extend(n for n in nodes[index].input if n)
    if not needed and output not in producers:
        raise UnsupportedModel(f"no node computes the graph's output {output!r}")
    return [node for i, node in enumerate(nodes) if i in needed]

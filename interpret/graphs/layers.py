"""A classifier graph's layers: the tensors Grad-CAM weighs and unit projections start from,
named as the PyTorch model names its modules.

torch.onnx's exporter records for every node the module path it ran in
(`pkg.torch.onnx.name_scopes` in the node's metadata, e.g. `['', 'layer1', 'layer1.0',
'layer1.0.relu', 'relu_1']`: the root, the enclosing modules, then the operation). A module's
output is its last node's output, so a container and its last child name the same tensor. A
module that ran more than once per forward pass (torchvision's ResNet calls each block's `relu`
twice) is recognised by its nodes falling into separate connected groups; like the PyTorch
implementation (`cnnzoo.interpret.modules.require_single_run`) such a module is not offered as a
layer, since it has no single output. A graph without that metadata (made by another exporter)
names its layers by their ONNX tensor names.

Layers are the image-dependent tensors `[N, C, H, W]` or `[N, F]` the score depends on, listed
in the order they finish (a container after its last child), which is also how the default
Grad-CAM layer is chosen: the last one with a spatial output (H * W > 1), as
`cnnzoo.interpret.gradcam.cam_layer` chooses it in PyTorch.

A classifier may declare in its metadata `module_prefix`, a prefix of the recorded module paths
that is not part of the model's own names: cnnzoo's fp16 and uint8 exports wrap the network in a
module called `inner`, and the names offered are the network's own (`layer3`, not `inner.layer3`).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from cnnzoo.errors import LayerNotFound, UnsupportedModel
from cnnzoo.interpret.graphs.classifier import Classifier

__all__ = ["Layer", "LayerTable", "explanation_layers", "layer_index", "layer_table"]

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
PREFIX_KEY = "module_prefix"


@dataclass(frozen=True)
class Layer:
    """One layer of a classifier graph.

    Attributes:
        name: the PyTorch module path (where the graph records it), else the tensor's name.
        tensor: the ONNX tensor holding the layer's output.
        shape: the output's shape without the batch axis: `(C, H, W)` or `(F,)`.
    """

    name: str
    tensor: str
    shape: tuple[int, ...]

    @property
    def spatial(self) -> bool:
        """An output `[C, H, W]` (Grad-CAM needs one)."""
        return len(self.shape) == 3

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "tensor": self.tensor, "shape": list(self.shape)}


@dataclass(frozen=True)
class LayerTable:
    """The layers of a classifier and the modules that cannot be layers.

    Attributes:
        layers: in the order they finish.
        repeated: module path -> how often it runs, for modules that run more than once.
    """

    layers: tuple[Layer, ...]
    repeated: dict[str, int] = field(default_factory=dict)

    def find(self, name: str, among: tuple[Layer, ...] | None = None) -> int:
        """The index of `name` (a layer name, else a tensor name) in `among` (default: every
        layer).

        Raises:
            UnsupportedModel: the module runs more than once per forward pass.
            LayerNotFound: no such layer (the message lists the valid names).
        """
        layers = self.layers if among is None else among
        for i, layer in enumerate(layers):
            if layer.name == name:
                return i
        for i, layer in enumerate(layers):
            if layer.tensor == name:
                return i
        if name in self.repeated:
            raise UnsupportedModel(
                f"layer {name!r} runs {self.repeated[name]} times per forward pass, so it has no "
                "single output; pick a module that runs once (e.g. the convolution before a "
                "reused ReLU, or the block that contains it)"
            )
        raise LayerNotFound(
            f"unknown layer {name!r}; valid layers: {', '.join(layer.name for layer in layers)}"
        )

    def default_cam(self, among: tuple[Layer, ...] | None = None) -> int:
        """The index (in `among`) of the last layer with a spatial output of more than one
        position.

        Raises:
            UnsupportedModel: there is none.
        """
        layers = self.layers if among is None else among
        for i in range(len(layers) - 1, -1, -1):
            shape = layers[i].shape
            if len(shape) == 3 and shape[1] * shape[2] > 1:
                return i
        raise UnsupportedModel("the model has no layer with a spatial output for Grad-CAM")


def explanation_layers(classifier: onnx.ModelProto | Classifier) -> list[Layer]:
    """The layers of a classifier graph that Grad-CAM and unit projections can use, in the order
    they finish.

    Raises:
        UnsupportedModel: the graph cannot be explained (see `build_explanation`).
    """
    cls = classifier if isinstance(classifier, Classifier) else Classifier(classifier)
    return list(layer_table(cls).layers)


def layer_index(layers: Sequence[Layer | Mapping[str, Any]], name: str) -> int:
    """The index of layer `name` in an explanation graph's layer list (its `layers` metadata,
    parsed from JSON, or `Layer`s): what the graph's `layer` input takes. A name matches a
    layer's name first, else its tensor's.

    Raises:
        LayerNotFound: no such layer (the message lists the valid names).
    """
    entries = [
        layer if isinstance(layer, Layer) else Layer(layer["name"], layer["tensor"],
                                                     tuple(layer["shape"]))
        for layer in layers
    ]  # fmt: skip
    return LayerTable(tuple(entries)).find(name)


def layer_table(cls: Classifier) -> LayerTable:
    """The layers of `cls` (see `explanation_layers`) and its modules that run repeatedly."""
    candidates = _candidates(cls)
    scopes = {i: _scopes(cls.nodes[i]) for i in cls.data_nodes}
    if not any(scopes.values()):
        return LayerTable(
            tuple(Layer(name, name, shape) for name, (shape, _) in candidates.items())
        )
    prefix = _metadata(cls.model).get(PREFIX_KEY, "")
    members: dict[str, list[int]] = defaultdict(list)
    for index, paths in scopes.items():
        for path in paths:
            if prefix:
                if not path.startswith(prefix):
                    continue
                path = path[len(prefix) :]
            if path:
                members[path].append(index)
    found: list[tuple[int, int, Layer]] = []
    repeated = {}
    for path, indices in members.items():
        calls = _calls(cls, indices)
        if calls > 1:
            repeated[path] = calls
            continue
        tensor = cls.nodes[max(indices)].output[0]
        if tensor in candidates:
            shape, finish = candidates[tensor]
            found.append((finish, -path.count("."), Layer(path, tensor, shape)))
    found.sort(key=lambda item: (item[0], item[1]))
    return LayerTable(tuple(layer for _, _, layer in found), repeated)


def _candidates(cls: Classifier) -> dict[str, tuple[tuple[int, ...], int]]:
    """Tensors that can be layers -> (shape without batch, position of their node), in order:
    image-dependent, downstream of the explained tensor, `[N, C, H, W]` or `[N, F]`, and
    something the score depends on."""
    needed = {cls.score}
    for index in reversed(cls.data_nodes):
        node = cls.nodes[index]
        if any(name in needed for name in node.output):
            needed.update(n for n in node.input if n in cls.infos)
    downstream = {cls.explained}
    out: dict[str, tuple[tuple[int, ...], int]] = {}
    for position, index in enumerate(cls.data_nodes):
        node = cls.nodes[index]
        if not any(n in downstream for n in node.input):
            continue
        downstream.update(n for n in node.output if n)
        name = node.output[0]
        info = cls.infos.get(name)
        if info is None or name not in needed or info.batch_axis != 0 or info.rank not in (2, 4):
            continue
        out[name] = (info.sizes, position)
    return out


def _scopes(node: onnx.NodeProto) -> list[str]:
    """The module paths a node ran in, outermost first (without the root and the op)."""
    for entry in node.metadata_props:
        if entry.key == SCOPES_KEY:
            try:
                value = ast.literal_eval(entry.value)
            except (ValueError, SyntaxError):
                return []
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return [v for v in value[1:-1] if v]
    return []


def _calls(cls: Classifier, indices: list[int]) -> int:
    """How many separate runs the nodes of one module form: connected groups of nodes that
    feed each other."""
    parent = {i: i for i in indices}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in indices:
        for name in cls.nodes[i].input:
            j = cls.producer.get(name)
            if j is not None and j in parent:
                parent[root(i)] = root(j)
    return len({root(i) for i in indices})


def _metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in model.metadata_props}

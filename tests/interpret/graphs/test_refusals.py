"""What the transformation refuses, and how: `UnsupportedModel` naming the node, its op and why
(never a silent approximation), `LayerNotFound` listing the valid names, `InvalidInput` for bad
settings."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cnnzoo.errors import InvalidInput, LayerNotFound, UnsupportedModel
from cnnzoo.interpret.graphs import (
    GRAPH_METHODS,
    build_explanation,
    explanation_layers,
    layer_index,
)
from tests.interpret.graphs.helpers import explain

RNG = np.random.default_rng(0)


def model(
    body: list[onnx.NodeProto],
    source: str = "b",
    *,
    shape: list = ["N", 2, 4, 4],  # noqa: B006
    dtype: int = TensorProto.FLOAT,
    inits: dict[str, np.ndarray] | None = None,
    head: bool = True,
    output_shape: list | None = None,
) -> onnx.ModelProto:
    """x -> conv 2->2 (3x3, same) -> a -> `body` -> `source` -> [Flatten -> Gemm to 3 classes]."""
    size = int(np.prod([d for d in shape[1:] if isinstance(d, int)])) if shape else 0
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1], name="conv"), *body]
    values = {"w": RNG.standard_normal((2, 2, 3, 3)).astype(np.float32), **(inits or {})}
    if head:
        nodes += [
            helper.make_node("Flatten", [source], ["f"], name="flatten"),
            helper.make_node("Gemm", ["f", "h"], ["y"], transB=1, name="head"),
        ]
        values["h"] = RNG.standard_normal((3, size)).astype(np.float32)
    graph = helper.make_graph(
        nodes,
        "m",
        [helper.make_tensor_value_info("x", dtype, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape or ["N", 3])],
        [numpy_helper.from_array(v, k) for k, v in values.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def relu(name: str = "relu") -> onnx.NodeProto:
    return helper.make_node("Relu", ["a"], ["b"], name=name)


def test_an_unsupported_operator_is_named_with_its_node() -> None:
    m = model([helper.make_node("HardSwish", ["a"], ["b"], name="hs")])
    for method in ("gradient", "deconvnet", "occlusion"):
        with pytest.raises(UnsupportedModel, match=r"node 'hs' \(HardSwish\): is not supported"):
            build_explanation(m, method)


def test_a_custom_domain_operator_is_refused() -> None:
    m = model([helper.make_node("Mystery", ["a"], ["b"], name="odd", domain="com.example")])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedModel, match=r"node 'odd' \(Mystery\): .*custom domain"):
        build_explanation(m, "gradient")


@pytest.mark.parametrize(
    ("body", "inits", "why"),
    [
        ([helper.make_node("Softmax", ["a"], ["b"], axis=1, name="sm")], {},
         r"node 'sm' \(Softmax\): a softmax inside the network"),
        ([helper.make_node("Concat", ["a", "k"], ["b"], axis=1, name="cat")],
         {"k": np.zeros((1, 2, 4, 4), np.float32)},
         r"node 'cat' \(Concat\): concatenates a constant"),
        ([helper.make_node("ReduceMean", ["a", "ax"], ["b"], name="mean")],
         {"ax": np.array([0], np.int64)}, r"node 'mean' \(ReduceMean\): reduces over the batch"),
        ([helper.make_node("Div", ["k", "a"], ["b"], name="div")], {"k": np.ones((), np.float32)},
         r"node 'div' \(Div\): divides by a tensor computed from the image"),
        ([helper.make_node("Pad", ["a", "p"], ["b"], mode="reflect", name="pad")],
         {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}, r"node 'pad' \(Pad\): .*reflect"),
        ([helper.make_node("Slice", ["a", "s", "e", "ax"], ["b"], name="cut")],
         {"s": np.array([1]), "e": np.array([2]), "ax": np.array([0])},
         r"node 'cut' \(Slice\): slices the batch axis"),
    ],
)  # fmt: skip
def test_operators_that_would_mix_rows_or_cannot_be_inverted(body, inits, why) -> None:
    with pytest.raises(UnsupportedModel, match=why):
        build_explanation(model(body, inits=inits), "gradient")


def test_a_reshape_that_merges_the_batch_axis_is_refused() -> None:
    body = [relu(), helper.make_node("Reshape", ["b", "s"], ["f"], name="merge"),
            helper.make_node("Gemm", ["f", "h"], ["y"], transB=1)]  # fmt: skip
    m = model(body, head=False, inits={"s": np.array([1, -1], np.int64),
                                       "h": np.ones((3, 32), np.float32)})  # fmt: skip
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    with pytest.raises(
        UnsupportedModel, match=r"node 'merge' \(Reshape\): reshapes \[N, 2, 4, 4\]"
    ):
        build_explanation(m, "gradient")


@pytest.mark.parametrize("method", ["deconvnet", "guided-backprop", "guided-grad-cam",
                                    "deconvnet-unit", "guided-backprop-unit"])  # fmt: skip
def test_relu_rules_refuse_a_gelu_net(method: str) -> None:
    m = model([helper.make_node("Gelu", ["a"], ["b"], name="gelu")])
    m.opset_import[0].version = 20
    with pytest.raises(UnsupportedModel, match=r"node 'gelu' \(Gelu\): .* defined for ReLU only"):
        build_explanation(m, method)
    for method in ("gradient", "input-x-gradient", "grad-cam", "gradient-unit"):
        build_explanation(m, method)  # the plain gradient passes through GELU exactly


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda m: m.graph.input[0].type.tensor_type.shape.dim[0].ClearField("dim_param")
         or setattr(m.graph.input[0].type.tensor_type.shape.dim[0], "dim_value", 1),
         "fixed batch size 1"),
        (lambda m: setattr(m.graph.input[0].type.tensor_type.shape.dim[2], "dim_param", "H"),
         "dimension 2 of the input 'x' is not fixed"),
        (lambda m: m.graph.input.append(helper.make_tensor_value_info("z", 1, [1])),
         "the graph has 2 inputs"),
        (lambda m: m.graph.output.append(helper.make_tensor_value_info("a", 1, None)),
         "the graph has 2 outputs"),
    ],
)  # fmt: skip
def test_graphs_the_transformation_cannot_follow(change, why) -> None:
    m = model([relu()])
    change(m)
    with pytest.raises(UnsupportedModel, match=why):
        build_explanation(m, "gradient")


def test_an_input_that_is_not_an_image_is_refused() -> None:
    m = model([relu()], shape=["N", 32], head=False)
    with pytest.raises(UnsupportedModel, match="has 2 dimensions; explanations take images"):
        build_explanation(m, "gradient")


def test_an_integer_image_must_be_cast_first() -> None:
    body = [helper.make_node("Cast", ["p"], ["x"], to=TensorProto.FLOAT)]
    m = model([relu()])
    m.graph.node.insert(0, body[0])
    m.graph.input[0].name = "p"
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    build_explanation(m, "gradient")  # Cast first: fine
    m.graph.node[0].CopyFrom(helper.make_node("Add", ["p", "p"], ["x"], name="sum"))
    with pytest.raises(UnsupportedModel, match=r"node 'sum' \(Add\): reads the integer image"):
        build_explanation(m, "gradient")


def test_names_the_graph_needs_are_freed() -> None:
    """A classifier whose tensors are called like the explanation graph's inputs and outputs
    (`target`, `attribution`) still gets the contract's names."""
    body = [
        helper.make_node("Relu", ["a"], ["target"]),
        helper.make_node("Identity", ["target"], ["attribution"]),
    ]
    m = model(body, "attribution")
    x = RNG.standard_normal((2, 2, 4, 4)).astype(np.float32)
    out = explain(m, "gradient", x, target=1)
    assert out["attribution"].shape == (2, 2, 4, 4) and out["target_used"].tolist() == [[1], [1]]


# -- layers ----------------------------------------------------------------------------------


def _scoped(path: list[str], op: str) -> onnx.StringStringEntryProto:
    return onnx.StringStringEntryProto(
        key="pkg.torch.onnx.name_scopes", value=repr(["", *path, op])
    )


def test_layer_names_come_from_the_exporters_module_paths() -> None:
    """As torch.onnx records them: a container's output is its last node's; a module whose
    nodes run as two separate groups (a reused ReLU) is no layer."""
    body = [
        helper.make_node("Relu", ["a"], ["b"], name="r1"),
        helper.make_node("Conv", ["b", "w"], ["c"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c"], ["d"], name="r2"),
    ]
    m = model(body, "d")
    scopes = {
        "conv": ["block", "block.conv1"],
        "r1": ["block", "block.relu"],
        "conv2": ["block", "block.conv2"],
        "r2": ["block", "block.relu"],
        "flatten": ["flatten"],
        "head": ["fc"],
    }
    for node in m.graph.node:
        node.metadata_props.append(_scoped(scopes[node.name], node.op_type.lower()))
    layers = explanation_layers(m)
    assert [(layer.name, layer.tensor) for layer in layers] == [
        ("block.conv1", "a"),
        ("block.conv2", "c"),
        ("block", "d"),
        ("flatten", "f"),
        ("fc", "y"),
    ]
    assert layers[2].shape == (2, 4, 4) and layers[3].shape == (32,)
    with pytest.raises(UnsupportedModel, match="layer 'block.relu' runs 2 times"):
        build_explanation(m, "grad-cam", default_layer="block.relu")
    with pytest.raises(LayerNotFound, match=r"unknown layer 'nope'; valid layers: block.conv1, "):
        build_explanation(m, "deconvnet-unit", layers=["nope"])
    graph = build_explanation(m, "grad-cam", default_layer="block.conv1")
    facts = {e.key: e.value for e in graph.metadata_props}
    assert facts["default_layer"] == "block.conv1"
    offered = json.loads(facts["layers"])
    assert layer_index(offered, "block.conv2") == 1 and layer_index(offered, "d") == 2
    with pytest.raises(LayerNotFound, match=r"valid layers: block.conv1, block.conv2, block$"):
        layer_index(offered, "fc")
    assert [e["name"] for e in json.loads(facts["layers"])] == ["block.conv1", "block.conv2",
                                                                "block"]  # fmt: skip


def test_without_module_paths_layers_are_tensor_names() -> None:
    m = model([relu()])
    assert [layer.name for layer in explanation_layers(m)] == ["a", "b", "f", "y"]
    assert explanation_layers(m)[1].tensor == "b"


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "settings", "why"),
    [
        ("gradient", {"steps": 3}, r"gradient takes no setting 'steps'; its settings: "),
        ("integrated-gradients", {"steps": 0}, "steps must be an integer from 1 to 1024"),
        ("integrated-gradients", {"steps": 10**6}, "steps must be an integer from 1 to 1024"),
        ("integrated-gradients", {"baseline": "grey"}, "baseline must be a number"),
        ("occlusion", {"window": 5}, "occlusion window must be between 1 and 4, got 5"),
        ("occlusion", {"window": 2, "stride": 3}, "stride 3 is larger than the window 2"),
        ("grad-cam", {"layers": "a"}, "layers must be a non-empty list"),
    ],
)
def test_bad_settings(method: str, settings: dict, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        build_explanation(model([relu()]), method, **settings)


def test_an_unknown_method_lists_the_methods() -> None:
    with pytest.raises(InvalidInput, match=f"valid methods: {', '.join(GRAPH_METHODS)}"):
        build_explanation(model([relu()]), "lime")

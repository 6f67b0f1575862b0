"""INTERPRET-FACTS on explanation graphs of tiny models: the hand-weighted models of the PyTorch
tests (`tests.interpret.helpers`) exported to ONNX in float64 and run in onnx's reference runtime
(numpy, so no float32 ties), the hand-worked answers of `tests/interpret/test_rules.py`, and the
max-pooling facts on ONNX Runtime itself (its switches are what the served graphs use)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from cnnzoo.interpret.attribution import Deconvnet, Gradient, GuidedBackprop
from cnnzoo.interpret.graphs import GRAPH_METHODS, build_explanation, explanation_layers
from tests.interpret.graphs.helpers import explain, feeds_for, run, to_onnx
from tests.interpret.helpers import DTYPE, ConvNet, NoRelu, OneConv, OneHidden, ParallelBranches
from tests.interpret.test_rules import CAPTUM_INPUT, DECONV_EXPECTED, GUIDED_EXPECTED

RULES = ["gradient", "deconvnet", "guided-backprop"]
TORCH_RULES = {"gradient": Gradient, "deconvnet": Deconvnet, "guided-backprop": GuidedBackprop}


class AsImage(nn.Module):
    """A model of flat inputs `[N, D]` taking them as images `[N, D, 1, 1]` (explanation graphs
    explain images)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.flatten(1))


def maps(classifier: onnx.ModelProto, method: str, x: torch.Tensor, **inputs) -> np.ndarray:
    """The graph's attribution in onnx's reference runtime (float64 inside)."""
    return explain(classifier, method, x.numpy(), runtime="reference", **inputs)["attribution"]


def close(a: np.ndarray, b: np.ndarray | torch.Tensor) -> bool:
    """Equal up to the float32 of the graph's output."""
    return np.allclose(a, np.asarray(b, dtype=np.float64), rtol=1e-6, atol=1e-9)


# -- fact 1 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["reference", "ort"])
def test_fact1_captum_fixture(runtime: str) -> None:
    dtype = DTYPE if runtime == "reference" else torch.float32
    model = OneConv().to(dtype)
    x = CAPTUM_INPUT.to(dtype)
    classifier = to_onnx(model, x)
    guided = explain(classifier, "guided-backprop", x.numpy(), runtime, target=0)["attribution"]
    deconv = explain(classifier, "deconvnet", x.numpy(), runtime, target=0)["attribution"]
    assert np.array_equal(guided[0, 0], np.array(GUIDED_EXPECTED, dtype=np.float32))
    assert np.array_equal(deconv[0, 0], np.array(DECONV_EXPECTED, dtype=np.float32))


# -- fact 2 ------------------------------------------------------------------------------------


def test_fact2_one_hidden_layer() -> None:
    model = AsImage(OneHidden(W=[[1, 2], [-1, 1], [2, -1]], b=[0, 0.5, -4], v=[1, -2, 3]))
    x = torch.tensor([[1.0, 1.0]], dtype=DTYPE).view(1, 2, 1, 1)
    classifier = to_onnx(model, x)
    assert maps(classifier, "gradient", x, target=0).reshape(-1).tolist() == [3.0, 0.0]
    assert maps(classifier, "guided-backprop", x, target=0).reshape(-1).tolist() == [1.0, 2.0]
    assert maps(classifier, "deconvnet", x, target=0).reshape(-1).tolist() == [7.0, -1.0]


# -- facts 3 to 5 ------------------------------------------------------------------------------


def test_fact3_no_relu_all_methods_equal() -> None:
    torch.manual_seed(3)
    model, x = NoRelu(), torch.randn(3, 2, 8, 8, dtype=DTYPE)
    classifier = to_onnx(model, x)
    found = [maps(classifier, rule, x, target=2) for rule in RULES]
    assert np.abs(found[0]).sum() > 0
    assert np.array_equal(found[0], found[1]) and np.array_equal(found[0], found[2])
    assert close(found[0], Gradient(model).attribute(x, target=2))


def _positive_convnet() -> ConvNet:
    model = ConvNet()
    with torch.no_grad():
        for layer in (model.conv1, model.conv2):
            layer.weight.uniform_(0.1, 1.0)
            layer.bias.uniform_(0.1, 1.0)
    return model


def test_fact4_all_relus_active_guided_equals_deconvnet() -> None:
    torch.manual_seed(4)
    model = _positive_convnet()
    x = torch.rand(2, 1, 8, 8, dtype=DTYPE) + 0.1
    classifier = to_onnx(model, x)
    guided = maps(classifier, "guided-backprop", x, target=0)
    assert np.array_equal(guided, maps(classifier, "deconvnet", x, target=0))
    assert not close(guided, maps(classifier, "gradient", x, target=0))


def test_fact5_nonnegative_weights_above_first_relu_guided_equals_gradient() -> None:
    torch.manual_seed(5)
    model = ConvNet()
    with torch.no_grad():
        model.conv2.weight.abs_()
        model.fc.weight.abs_()
    x = torch.randn(2, 1, 8, 8, dtype=DTYPE)
    classifier = to_onnx(model, x)
    guided = maps(classifier, "guided-backprop", x, target=1)
    assert np.array_equal(guided, maps(classifier, "gradient", x, target=1))
    assert not close(guided, maps(classifier, "deconvnet", x, target=1))


# -- facts 6 and 7 -----------------------------------------------------------------------------


def test_fact6_deconvnet_without_pooling_ignores_the_input_and_says_so() -> None:
    torch.manual_seed(6)
    model = ConvNet(pool=False)
    x1, x2 = torch.randn(1, 1, 8, 8, dtype=DTYPE), torch.randn(1, 1, 8, 8, dtype=DTYPE)
    classifier = to_onnx(model, x1)
    assert np.array_equal(maps(classifier, "deconvnet", x1), maps(classifier, "deconvnet", x2))
    assert not close(maps(classifier, "gradient", x1), maps(classifier, "gradient", x2))
    facts = {e.key: e.value for e in build_explanation(classifier, "deconvnet").metadata_props}
    (warning,) = json.loads(facts["warnings"])
    assert "cannot depend on the input" in warning and "no max-pooling" in warning
    pooled = to_onnx(ConvNet(pool=True), ConvNet.inputs(1, pool=True))
    facts = {e.key: e.value for e in build_explanation(pooled, "deconvnet").metadata_props}
    assert json.loads(facts["warnings"]) == []


def test_fact6_deconvnet_with_pooling_depends_only_on_switches() -> None:
    torch.manual_seed(7)
    model = ConvNet(pool=True)
    x1 = ConvNet.inputs(1, pool=True)
    x2 = x1 + 1e-3 * torch.randn_like(x1)
    classifier = to_onnx(model, x1)
    with torch.no_grad():
        same = [
            nn.functional.max_pool2d(model.relu1(model.conv1(x)), 2, return_indices=True)[1]
            for x in (x1, x2, torch.flip(x1, dims=[-1]))
        ]
    assert torch.equal(same[0], same[1]) and not torch.equal(same[0], same[2])
    first = maps(classifier, "deconvnet", x1)
    assert np.array_equal(first, maps(classifier, "deconvnet", x2))
    assert not np.array_equal(first, maps(classifier, "deconvnet", torch.flip(x1, dims=[-1])))


@pytest.mark.parametrize("method", ["deconvnet-unit", "guided-backprop-unit", "gradient-unit"])
def test_fact7_pooled_seed_reaches_only_the_argmax(method: str) -> None:
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2)).to(DTYPE)
    model = nn.Sequential(model, nn.Flatten(), nn.Linear(4, 2).to(DTYPE))
    x = torch.tensor([[[[1, 5, 0, 2], [3, 4, 9, 1], [7, 0, 2, 2], [6, 8, 3, 4]]]], dtype=DTYPE)
    classifier = to_onnx(model, x)
    pool = next(n.output[0] for n in classifier.graph.node if n.op_type == "MaxPool")
    index = [layer.tensor for layer in explanation_layers(classifier)].index(pool)
    both = torch.cat([x, x])
    found = maps(classifier, method, both, layer=index, channel=0, position=[[0, 1], [1, 0]])
    first, second = np.zeros((4, 4)), np.zeros((4, 4))
    first[1, 2] = second[3, 1] = 1  # the argmaxes of windows (0, 1) and (1, 0)
    assert np.array_equal(found[0, 0], first) and np.array_equal(found[1, 0], second)


def test_overlapping_windows_add_their_switch_gradients() -> None:
    """3x3 windows at stride 1 over a 5x5 map with one peak: all nine windows pick the peak, so
    the gradient of their sum there is 9 (ScatterElements adds; MaxUnpool would not)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (1, 1, 5, 5)).astype(np.float32)
    x[0, 0, 2, 2] = 10.0
    x[0, 0, 0, 0] = 9.0  # in one window only, where it loses
    nodes = [
        helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], strides=[1, 1]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["y"], transB=1),
    ]
    weight = numpy_helper.from_array(np.ones((1, 9), np.float32), "w")
    graph = helper.make_graph(
        nodes,
        "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [weight],
    )
    classifier = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10
    )
    for rule in RULES:
        got = explain(classifier, rule, x, target=0)["attribution"]
        expected = np.zeros_like(x)
        expected[0, 0, 2, 2] = 9.0
        assert np.array_equal(got, expected), rule
    reference = torch.from_numpy(x).requires_grad_()
    nn.functional.max_pool2d(reference, 3, 1).sum().backward()
    assert np.array_equal(reference.grad.numpy(), expected)


def test_tied_windows_route_to_the_first_maximum_as_pytorch_does() -> None:
    """After a ReLU many windows are all zero: ONNX Runtime's switches pick the first maximum,
    as PyTorch's do, so even the deconvnet (which passes gradients through inactive ReLUs)
    matches exactly."""
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        model[3].weight.uniform_(-1, 1)
    x = -torch.rand(2, 1, 8, 8)  # every window ties at zero
    x[:, :, ::3, ::3] = 1.0  # except some
    classifier = to_onnx(model, x)
    for rule, implementation in TORCH_RULES.items():
        got = explain(classifier, rule, x.numpy(), target=1)["attribution"]
        assert np.array_equal(got, implementation(model).attribute(x, target=1).numpy()), rule


# -- facts 8 to 11 -----------------------------------------------------------------------------


class Scaled(nn.Module):
    def __init__(self, model: nn.Module, c: float) -> None:
        super().__init__()
        self.model, self.c = model, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * self.c


@pytest.mark.parametrize("rule", RULES)
def test_fact8_seed_scaling(rule: str) -> None:
    torch.manual_seed(8)
    model, x = ConvNet(pool=True), ConvNet.inputs(2, pool=True)
    base = maps(to_onnx(model, x), rule, x, target=2)
    assert np.abs(base).sum() > 0
    assert close(maps(to_onnx(Scaled(model, 3.5), x), rule, x, target=2), 3.5 * base)


@pytest.mark.parametrize("rule", RULES)
def test_fact9_bias_free_nets_are_scale_invariant(rule: str) -> None:
    torch.manual_seed(9)
    model, x = ConvNet(pool=True, bias=False), ConvNet.inputs(2, pool=True)
    classifier = to_onnx(model, x)
    assert close(maps(classifier, rule, 7.0 * x, target=0), maps(classifier, rule, x, target=0))


@pytest.mark.parametrize("rule", RULES)
def test_fact10_class_attribution_is_logit_neuron_attribution(rule: str) -> None:
    torch.manual_seed(10)
    model, x = ConvNet(pool=True), ConvNet.inputs(3, pool=True)
    classifier = to_onnx(model, x)
    logits = [layer.tensor for layer in explanation_layers(classifier)].index("y")
    for target in range(3):
        neuron = maps(classifier, f"{rule}-unit", x, layer=logits, channel=target)
        assert np.array_equal(maps(classifier, rule, x, target=target), neuron)


@pytest.mark.parametrize("method", GRAPH_METHODS)
def test_fact11_alone_or_in_a_batch(method: str) -> None:
    torch.manual_seed(11)
    model = ConvNet(pool=True).float()
    x = ConvNet.inputs(5, pool=True).float()
    classifier = to_onnx(model, x)
    inputs = {"target": [0, 2, 1, 2, 0], "layer": [0, 1, -1, 2, 0], "channel": [1, 0, 2, 1, 0]}
    settings = {"steps": 8} if method == "integrated-gradients" else {}
    graph = build_explanation(classifier, method, **settings)
    # the activations graph explains nothing: its last layer's output stands in for a map
    output = graph.graph.output[-1].name if method == "activations" else "attribution"
    batch = run(graph, feeds_for(graph, x.numpy(), **inputs))[output]
    assert np.abs(batch).sum() > 0
    for i in range(5):
        alone = {k: v[i : i + 1] for k, v in inputs.items()}
        row = run(graph, feeds_for(graph, x[i : i + 1].numpy(), **alone))[output]
        np.testing.assert_allclose(
            row, batch[i : i + 1], rtol=1e-5, atol=1e-6 * np.abs(batch).max()
        )


# -- fact 12: one ReLU module shared by two branches -----------------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_fact12_shared_relu_module_graph_equals_the_pytorch_rules(rule: str) -> None:
    """In ONNX every ReLU call is its own node, so a module shared by interleaving branches is
    no special case; the map equals the PyTorch implementation's per-call rule."""
    torch.manual_seed(12)
    model = AsImage(ParallelBranches(shared=True))
    x = torch.randn(3, 4, dtype=DTYPE).view(3, 4, 1, 1)
    expected = TORCH_RULES[rule](model).attribute(x, target=0)
    assert close(maps(to_onnx(model, x), rule, x, target=0), expected)

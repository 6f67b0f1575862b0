"""Every operator the transformation covers, in the spellings exporters write, against PyTorch.

Small PyTorch models exercising one operator each are exported with torch.onnx (TorchScript
exporter, opset 17: the graphs are upgraded to opset 18 first) and explained; the maps must equal
the PyTorch implementation's (gradient, deconvnet, guided backprop) in ONNX Runtime. Spellings no
PyTorch exporter writes (auto_pad, negative slice steps, GatherND, Gelu at opset 20) are built
by hand and checked against autograd on the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from cnnzoo.errors import UnsupportedModel
from cnnzoo.interpret.attribution import Deconvnet, Gradient, GuidedBackprop
from cnnzoo.interpret.gradcam import GradCam
from cnnzoo.interpret.gradient_methods import InputXGradient, IntegratedGradients
from cnnzoo.interpret.graphs import explanation_layers
from tests.interpret.graphs.helpers import assert_maps_match, explain, to_onnx

RULES = {"gradient": Gradient, "deconvnet": Deconvnet, "guided-backprop": GuidedBackprop}


class Net(nn.Module):
    """`body` (the operator under test, image -> image or features), ReLU, then a linear head
    to 5 classes."""

    def __init__(self, body: Callable[[torch.Tensor], torch.Tensor], features: int) -> None:
        super().__init__()
        self.body = body if isinstance(body, nn.Module) else Lambda(body)
        self.relu = nn.ReLU()
        self.head = nn.Linear(features, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.body(x)).flatten(1))


class Lambda(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def conv(*args, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(*args, **kwargs)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.b = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.a(x)) + self.b(x) + x.mean((2, 3), keepdim=True)


class Branches(nn.Module):
    """Concat of two branches, a product of two image-dependent tensors, arithmetic with
    constants both ways round."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(4, 3, 3, padding=1)
        self.b = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.a(x), self.b(x) * x[:, :2]], dim=1)
        return (2.0 - y) / 3.0 + (y - 0.5) * 1.5


class Shapes(nn.Module):
    """view(size(0), -1) (a Reshape fed by Shape/Gather/Concat), unsqueeze/squeeze, permute,
    matmul with a constant on a rank-3 tensor, and a standalone batch norm."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.weight = nn.Parameter(torch.randn(64, 7))
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(-2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.relu(x)).permute(0, 1, 3, 2)
        z = (y.reshape(y.size(0), 4, -1) @ self.weight).unsqueeze(2).squeeze(2)
        return z.view(z.size(0), -1)


# name -> (the model, input shape [C, H, W])
CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int]]] = {
    "conv groups/stride/dilation/pads": (
        lambda: Net(conv(4, 6, 3, stride=2, padding=(1, 2), dilation=2, groups=2, bias=False),
                    6 * 4 * 5), (4, 9, 9)),
    "conv same padding, even kernel": (
        lambda: Net(conv(4, 3, 4, padding="same"), 3 * 64), (4, 8, 8)),
    "conv stride leaves input rows": (lambda: Net(conv(4, 3, 3, stride=3), 3 * 9), (4, 10, 10)),
    "maxpool overlapping, padded, ceil": (
        lambda: Net(nn.Sequential(conv(4, 4, 1), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)), 4 * 25),
        (4, 9, 9)),
    "maxpool dilated": (
        lambda: Net(nn.Sequential(conv(4, 4, 1), nn.MaxPool2d(2, 1, dilation=2)), 4 * 36),
        (4, 8, 8)),
    "avgpool include pad": (
        lambda: Net(nn.AvgPool2d(3, 2, padding=1, count_include_pad=True), 4 * 25), (4, 9, 9)),
    "avgpool exclude pad": (
        lambda: Net(nn.AvgPool2d(3, 2, padding=1, count_include_pad=False), 4 * 25), (4, 9, 9)),
    "avgpool ceil, include pad": (
        lambda: Net(nn.AvgPool2d(3, 2, padding=1, ceil_mode=True), 4 * 25), (4, 8, 8)),
    "avgpool ceil, exclude pad": (
        lambda: Net(nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False), 4 * 25),
        (4, 9, 9)),
    "global average pool": (lambda: Net(nn.AdaptiveAvgPool2d(1), 4), (4, 6, 6)),
    "mean over space": (lambda: Net(Lambda(lambda x: x.mean((2, 3))), 4), (4, 6, 6)),
    "residual, broadcast add": (lambda: Net(Residual(), 4 * 36), (4, 6, 6)),
    "concat, products, constants": (lambda: Net(Branches(), 5 * 36), (4, 6, 6)),
    "shapes, matmul, batch norm": (lambda: Net(Shapes(), 28), (4, 8, 8)),
    "pad constant, crop": (
        lambda: Net(Lambda(lambda x: F.pad(F.pad(x, (1, 2, 0, 1), value=0.5), (-1, 0, -1, -2))),
                    4 * 4 * 8), (4, 6, 6)),
    "strided slices (ResNet-20 shortcut)": (
        lambda: Net(Lambda(lambda x: torch.cat([x[:, :, ::2, ::2], x[:, :, 1::2, 1::2]], 1)),
                    8 * 9), (4, 6, 6)),
    "slice with step 3 and an end": (lambda: Net(Lambda(lambda x: x[:, 1:, 1:-1:3, ::2]), 3 * 6),
                                     (4, 6, 6)),
    "casts": (lambda: Net(Lambda(lambda x: x.double().mul(2).float()), 4 * 36), (4, 6, 6)),
    "final softmax": (lambda: nn.Sequential(Net(conv(4, 2, 3), 2 * 16), nn.Softmax(1)), (4, 6, 6)),
    "final log-softmax": (
        lambda: nn.Sequential(Net(conv(4, 2, 3), 2 * 16), nn.LogSoftmax(1)), (4, 6, 6)),
}  # fmt: skip


def _logits(model: nn.Module) -> nn.Module:
    """The model without a final softmax: what the graphs explain."""
    if isinstance(model, nn.Sequential) and isinstance(model[-1], (nn.Softmax, nn.LogSoftmax)):
        return model[0]
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_operator_backward_equals_pytorch(case: str) -> None:
    torch.manual_seed(0)
    make, shape = CASES[case]
    model = make().eval()
    x = torch.randn(4, *shape)
    classifier = to_onnx(model, x)
    targets = torch.tensor([0, 3, 1, 4])
    for rule, implementation in RULES.items():
        got = explain(classifier, rule, x.numpy(), target=targets.numpy())
        expected = implementation(_logits(model)).attribute(x, target=targets).numpy()
        assert np.abs(expected).max() > 0
        assert_maps_match(got["attribution"], expected)
        with torch.no_grad():
            np.testing.assert_allclose(got["logits"], model(x).numpy(), rtol=1e-4, atol=1e-5)


SMOOTH = {
    "Sigmoid": nn.Sigmoid,
    "Tanh": nn.Tanh,
    "LeakyRelu": lambda: nn.LeakyReLU(0.2),
    "Clip (ReLU6)": nn.ReLU6,
    "GELU (Erf)": nn.GELU,
}


@pytest.mark.parametrize("activation", list(SMOOTH))
def test_smooth_activations_exact_for_gradients_refused_for_rules(activation: str) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(conv(3, 4, 3, padding=1), SMOOTH[activation](), nn.Flatten(),
                          nn.Linear(4 * 36, 5)).eval()  # fmt: skip
    x = 3 * torch.randn(4, 3, 6, 6)
    classifier = to_onnx(model, x)
    targets = torch.tensor([0, 1, 2, 3])
    cases = {
        "gradient": Gradient(model),
        "input-x-gradient": InputXGradient(model),
        "integrated-gradients": IntegratedGradients(model, steps=8),
    }
    for method, reference in cases.items():
        settings = {"steps": 8} if method == "integrated-gradients" else {}
        got = explain(classifier, method, x.numpy(), settings=settings, target=targets.numpy())
        assert_maps_match(got["attribution"], reference.attribute(x, target=targets).numpy())
    layer = explanation_layers(classifier)[0]
    cam = explain(classifier, "grad-cam", x.numpy(), target=targets.numpy(), layer=0)
    torch_layer = "0"  # the convolution, the first layer in both
    assert layer.shape == (4, 6, 6)
    assert_maps_match(cam["attribution"], GradCam(model, torch_layer).attribute(x, targets).numpy())
    for method in ("deconvnet", "guided-backprop", "guided-grad-cam", "deconvnet-unit"):
        with pytest.raises(UnsupportedModel, match=r"defined for ReLU only") as caught:
            explain(classifier, method, x.numpy())
        assert "node " in str(caught.value)


# -- spellings built by hand ----------------------------------------------------------------


def _model(nodes: list, inits: dict[str, np.ndarray], shape: tuple, classes: int, opset: int = 18):
    graph = helper.make_graph(
        nodes,
        "hand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    onnx.checker.check_model(model)
    return model


def _head(source: str, features: int, rng: np.random.Generator) -> tuple[list, dict]:
    return (
        [helper.make_node("Flatten", [source], ["flat"]),
         helper.make_node("Gemm", ["flat", "head"], ["y"], transB=1)],
        {"head": rng.standard_normal((3, features)).astype(np.float32)},
    )  # fmt: skip


def _autograd(fn: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, target: int) -> np.ndarray:
    t = torch.from_numpy(x).requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(t)[:, target].sum(), t)
    return grad.numpy()


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_auto_pad_convolution_and_pooling(auto_pad: str) -> None:
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((3, 2, 4, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], auto_pad=auto_pad, strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], auto_pad=auto_pad, kernel_shape=[2, 2],
                         strides=[1, 2]),
    ]  # fmt: skip
    sizes = {"SAME_UPPER": (4, 2), "SAME_LOWER": (4, 2), "VALID": (1, 1)}[auto_pad]
    head, inits = _head("p", 3 * sizes[0] * sizes[1], rng)
    classifier = _model(nodes + head, {"w": weight, **inits}, (2, 7, 7), 3)
    x = rng.standard_normal((2, 2, 7, 7)).astype(np.float32)

    def same(t: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], value: float):
        if auto_pad == "VALID":
            return t
        pads = []
        for size, k, s in zip(t.shape[-1:-3:-1], kernel[::-1], stride[::-1], strict=True):
            total = max(0, (-(-size // s) - 1) * s + k - size)
            small = total // 2
            pads += [small, total - small] if auto_pad == "SAME_UPPER" else [total - small, small]
        return F.pad(t, pads, value=value)

    def forward(t: torch.Tensor) -> torch.Tensor:
        c = F.conv2d(same(t, (4, 4), (2, 2), 0.0), torch.from_numpy(weight), stride=2)
        p = F.max_pool2d(same(torch.relu(c), (2, 2), (1, 2), -np.inf), (2, 2), (1, 2))
        return p.flatten(1) @ torch.from_numpy(inits["head"]).T

    got = explain(classifier, "gradient", x, target=1)
    assert_maps_match(got["attribution"], _autograd(forward, x, 1))


def test_negative_step_slice_gathernd_and_reduce_sum() -> None:
    rng = np.random.default_rng(3)
    index = np.array([[[0, 1], [1, 0]], [[1, 1], [0, 0]]], dtype=np.int64)  # [2, 2, 2]
    nodes = [
        helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["s"]),  # x[:, :, ::-2, 1:]
        helper.make_node("Transpose", ["s"], ["t"], perm=[2, 3, 0, 1]),
        helper.make_node("GatherND", ["t", "gi"], ["g"]),  # [2, 2, N, C]
        helper.make_node("Transpose", ["g"], ["u"], perm=[2, 3, 0, 1]),
        helper.make_node("ReduceSum", ["u", "axes"], ["r"], keepdims=1),
        helper.make_node("Add", ["u", "r"], ["v"]),
    ]
    inits = {
        "st": np.array([-1, 1], np.int64), "en": np.array([-100, 100], np.int64),
        "ax": np.array([2, 3], np.int64), "sp": np.array([-2, 1], np.int64),
        "gi": index, "axes": np.array([3], np.int64),
    }  # fmt: skip
    head, more = _head("v", 3 * 2 * 2, rng)
    classifier = _model(nodes + head, {**inits, **more}, (3, 5, 4), 3)
    x = rng.standard_normal((2, 3, 5, 4)).astype(np.float32)

    def forward(t: torch.Tensor) -> torch.Tensor:
        s = t.flip(2)[:, :, ::2, 1:]  # rows 4, 2, 0; columns 1-3
        picked = torch.stack(
            [torch.stack([s[:, :, i, j] for i, j in row], -1) for row in index], -2
        )
        v = picked + picked.sum(3, keepdim=True)
        return v.flatten(1) @ torch.from_numpy(more["head"]).T

    got = explain(classifier, "gradient", x, target=2)
    assert_maps_match(got["attribution"], _autograd(forward, x, 2))


def test_gelu_operator_at_opset_20() -> None:
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Gelu", ["x"], ["a"])]
    head, inits = _head("a", 2 * 3 * 3, rng)
    classifier = _model(nodes + head, inits, (2, 3, 3), 3, opset=20)
    x = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)

    def forward(t: torch.Tensor) -> torch.Tensor:
        return F.gelu(t).flatten(1) @ torch.from_numpy(inits["head"]).T

    got = explain(classifier, "gradient", x, target=0)
    assert_maps_match(got["attribution"], _autograd(forward, x, 0))
    with pytest.raises(UnsupportedModel, match=r"\(Gelu\): guided-backprop is defined for ReLU"):
        explain(classifier, "guided-backprop", x)

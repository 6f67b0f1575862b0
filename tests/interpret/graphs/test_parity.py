"""Every method's graph equals the PyTorch implementation and Captum (within 1e-5 of each map's
largest |value|), on what `cnnzoo export` writes for the zoo's trained models and on
torchvision's AlexNet, ResNet-18 and ResNet-50, at batch 32 and batch 1, in ONNX Runtime's CPU
provider. The suite keeps to the cases that cover every method and operator (large models get
fewer images for the slow methods); bench/explanation_parity.py runs the full matrix at 32.

Where a ReLU pre-activation lies within float32 rounding of zero (or a pooling window holds two
maxima within rounding), ONNX Runtime and PyTorch can decide it differently, and the map changes
by that unit's whole contribution: such rows are found by comparing the two runtimes' decisions
(`decisions_agree`) and only they may differ; most rows must agree. Integrated gradients meets
such ties at its scaled copies, so its decisions are compared at every step, and its graph is
also checked bit for bit against its own gradient steps.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam

from cnnzoo.interpret.graph_export.parity import OCCLUSION_FLOOR, pytorch_maps
from cnnzoo.interpret.graphs import build_explanation, gauss_legendre
from cnnzoo.interpret.graphs.classifier import Classifier
from cnnzoo.interpret.graphs.methods import get_graph_method
from cnnzoo.interpret.modules import get_layer
from tests.interpret.graphs.conftest import Exported
from tests.interpret.graphs.helpers import (
    TOLERANCE,
    assert_maps_match,
    decisions_agree,
    feeds_for,
    ort_session,
    run,
)

_AGREE: dict[str, np.ndarray] = {}
TORCHVISION = ("alexnet", "resnet18", "resnet50")


def _agree(e: Exported, method: str, count: int, steps: int) -> np.ndarray:
    """Per row of the first `count`, whether both runtimes decide alike wherever the method
    evaluates the model (cached per model: every method but integrated gradients evaluates it
    at the images themselves)."""
    x = e.x[:count]
    if method == "occlusion":  # forward passes only: no decision changes a map discontinuously
        return np.ones(count, dtype=bool)
    if method != "integrated-gradients":
        if e.name not in _AGREE:
            _AGREE[e.name] = decisions_agree(e.classifier, e.model, e.graph_input, e.x)
        return _AGREE[e.name][:count]
    network = Classifier(e.classifier).network()  # the copies are of the explained tensor
    alphas = gauss_legendre(steps)[0]
    scaled = torch.cat([x * np.float32(alpha) for alpha in alphas])  # step-major, as the graph
    agree = decisions_agree(network, e.model, scaled.numpy(), scaled)
    return agree.reshape(len(alphas), count).all(axis=0)


def _cam_floor(e: Exported, layer: str, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """Per row, 1e-5 of the largest sum of |weight x activation| over a position's channels:
    Grad-CAM is the ReLU of a sum over hundreds of channels that largely cancel, and float32
    rounds its terms, not their sum."""
    cam = LayerGradCam(e.model, get_layer(e.model, layer))
    terms = cam.attribute(x, target=targets, attr_dim_summation=False, relu_attributions=False)
    size = tuple(x.shape[-2:])
    magnitude = LayerAttribution.interpolate(terms.abs().sum(1, keepdim=True), size, "bilinear")
    return TOLERANCE * magnitude.detach().flatten(1).max(1).values.numpy()


def check(
    e: Exported,
    method: str,
    count: int,
    *,
    layer: str | None = None,
    single: int | None = 1,
    steps: int = 4,
) -> list[float]:
    """The graph's maps of the first `count` images against the PyTorch implementation's, and
    of image `single` run alone (batch 1) against the same reference row."""
    settings = {"steps": steps} if method == "integrated-gradients" else {}
    graph = build_explanation(e.classifier, method, **settings)
    facts = {entry.key: entry.value for entry in graph.metadata_props}
    layers = [entry["name"] for entry in json.loads(facts["layers"])]
    index = layers.index(layer) if layer else -1
    targets = (np.arange(count) * 3) % 7  # several classes, fixed
    channels = np.arange(count) % 5
    feeds = feeds_for(graph, e.graph_input[:count], target=targets, layer=index, channel=channels)
    if "position" in feeds and count > 1:
        feeds["position"][::2] = [0, 0]  # half the rows name a position, half take the strongest
    session = ort_session(graph)
    names = [o.name for o in graph.graph.output]
    outputs = dict(zip(names, session.run(None, feeds), strict=True))
    x = e.x[:count]
    expected = pytorch_maps(e.model, x, method, facts, outputs, layer=layer, channels=channels)
    agree = _agree(e, method, count, steps)
    floor: float | np.ndarray = OCCLUSION_FLOOR if method == "occlusion" else 0.0
    if method in ("grad-cam", "guided-grad-cam"):
        floor = _cam_floor(e, layer or facts["default_layer"], x, torch.from_numpy(targets))
        if method == "guided-grad-cam":
            guided = pytorch_maps(e.model, x, "guided-backprop", facts, outputs)
            floor = floor * np.abs(guided).reshape(count, -1).max(1)
    if get_graph_method(method).kind == "class":
        assert np.array_equal(outputs["target_used"][:, 0], targets)
    # integrated gradients evaluates copies per image: some rows meet a tie somewhere (see
    # test_integrated_gradients_is_its_gradient_steps for the exact check of the graph)
    # torchvision's deep random-weight networks have huge activations and many near-zero units
    least = 0.0 if method == "integrated-gradients" else 0.25 if e.name in TORCHVISION else 0.5
    found = assert_maps_match(outputs["attribution"], expected, agree, floor=floor, least=least)
    if single is not None:
        alone = {k: v[single : single + 1] for k, v in feeds.items()}
        row = dict(zip(names, session.run(None, alone), strict=True))["attribution"]
        row_floor = floor if np.isscalar(floor) else floor[single : single + 1]
        assert_maps_match(row, expected[single : single + 1], agree[single : single + 1],
                          floor=row_floor, least=0.0)  # fmt: skip
    return found


CORE = ("gradient", "deconvnet", "guided-backprop", "grad-cam")
OTHERS = ("input-x-gradient", "guided-grad-cam", "deconvnet-unit", "guided-backprop-unit",
          "gradient-unit")  # fmt: skip
# (model, method, images): LeNet-5 every method at 32 (and its uint8 export the methods that
# read the image differently); the CIFAR-10 models the ReLU rules and Grad-CAM at 32, the
# methods whose PyTorch reference is slow on fewer images
ZOO_CASES = [
    *(("lenet5-mnist", method, 32) for method in (*CORE, *OTHERS, "integrated-gradients",
                                                  "occlusion")),
    *(("lenet5-mnist/uint8", method, 32) for method in (*CORE, "integrated-gradients",
                                                        "occlusion", "deconvnet-unit")),
    *((key, method, 32) for key in ("alexnet-cifar10", "resnet20-cifar10") for method in CORE),
    *((key, method, 4) for key in ("alexnet-cifar10", "resnet20-cifar10")
      for method in (*OTHERS, "integrated-gradients")),
    *((key, "occlusion", 2) for key in ("alexnet-cifar10", "resnet20-cifar10")),
]  # fmt: skip


@pytest.mark.parametrize(("key", "method", "count"), ZOO_CASES)
def test_zoo_model_graphs_equal_pytorch(zoo_exports: dict[str, Exported], key, method, count):
    check(zoo_exports[key], method, count)


def test_integrated_gradients_with_captums_defaults(zoo_exports: dict[str, Exported]) -> None:
    """50 Gauss-Legendre steps, zero baseline: the graph's defaults are Captum's."""
    graph = build_explanation(zoo_exports["lenet5-mnist"].classifier, "integrated-gradients")
    facts = {entry.key: entry.value for entry in graph.metadata_props}
    assert (facts["steps"], facts["baseline"], facts["method"]) == ("50", "0.0", "gausslegendre")
    check(zoo_exports["lenet5-mnist"], "integrated-gradients", 8, steps=50)


@pytest.mark.parametrize("method", ["grad-cam", "guided-grad-cam", "deconvnet-unit"])
def test_other_layers_than_the_default(zoo_exports: dict[str, Exported], method: str) -> None:
    check(zoo_exports["alexnet-cifar10"], method, 4, layer="features.2", single=None)


# batch 32 for the ReLU rules and Grad-CAM; ResNet-18 also runs every other method on a few
# images (AlexNet's 4096-wide classifier makes each of its graphs slow to build and load)
TORCHVISION_CASES = [
    ("alexnet", "gradient", 32), ("alexnet", "deconvnet", 32),
    ("alexnet", "guided-backprop", 8), ("alexnet", "grad-cam", 8),
    *(("resnet18", method, 32) for method in CORE),
    *(("resnet18", method, 4) for method in OTHERS),
    ("resnet18", "integrated-gradients", 2), ("resnet18", "occlusion", 2),
    ("resnet50", "gradient", 32), ("resnet50", "guided-backprop", 32), ("resnet50", "grad-cam", 8),
]  # fmt: skip


@pytest.mark.parametrize(("name", "method", "count"), TORCHVISION_CASES)
def test_torchvision_graphs_equal_pytorch(
    torchvision_exports: dict[str, Exported], name: str, method: str, count: int
) -> None:
    check(torchvision_exports[name], method, count)


@pytest.mark.parametrize("key", ["alexnet-cifar10", "resnet20-cifar10", "lenet5-mnist/uint8"])
def test_integrated_gradients_is_its_gradient_steps(zoo_exports: dict[str, Exported], key: str):
    """Bit for bit in ONNX Runtime: the graph's integrated gradients equal (x - baseline) times
    the Gauss-Legendre weighted sum of the gradient graph at the scaled images, the gradient
    graph being the one checked against PyTorch above."""
    e = zoo_exports[key]
    network = Classifier(e.classifier).network()  # integer pixels do not scale: their floats do
    steps, baseline = 6, 0.25
    graph = build_explanation(network, "integrated-gradients", steps=steps, baseline=baseline)
    gradient = build_explanation(network, "gradient")
    images = e.x[:4].numpy()
    found = run(graph, feeds_for(graph, images, target=[1, 2, 3, 4]))["attribution"]
    alphas, weights = gauss_legendre(steps)
    total = np.zeros_like(images)
    for alpha, weight in zip(alphas, weights, strict=True):
        scaled = np.float32(baseline) + np.float32(alpha) * (images - np.float32(baseline))
        step = run(gradient, feeds_for(gradient, scaled, target=[1, 2, 3, 4]))["attribution"]
        total += np.float32(weight) * step
    np.testing.assert_allclose(found, total * (images - np.float32(baseline)), rtol=1e-6, atol=1e-7)


def test_fp16_graphs_follow_the_fp32_model(zoo_exports: dict[str, Exported]) -> None:
    """An fp16 graph computes in half precision, forward and backward (its Casts pass gradients
    back in the precision of each side), so it is compared with its own fp32 export, not to
    1e-5: the logits agree to fp16 precision and the maps point the same way."""
    half, full = zoo_exports["resnet20-cifar10/fp16"], zoo_exports["resnet20-cifar10"]
    for method in ("gradient", "guided-backprop", "grad-cam", "integrated-gradients"):
        settings = {"steps": 8} if method == "integrated-gradients" else {}
        found = []
        for e in (half, full):
            graph = build_explanation(e.classifier, method, **settings)
            found.append(run(graph, feeds_for(graph, e.graph_input[:8], target=3)))
        np.testing.assert_allclose(found[0]["logits"], found[1]["logits"], rtol=0, atol=0.05)
        a, b = (f["attribution"].reshape(8, -1).astype(np.float64) for f in found)
        cosine = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
        assert cosine.min() > 0.9, (method, cosine)


def test_a_row_is_the_same_alone_as_in_a_batch(torchvision_exports: dict[str, Exported]):
    e = torchvision_exports["resnet18"]
    graph = build_explanation(e.classifier, "guided-grad-cam")
    session = ort_session(graph)
    batch = session.run(["attribution"], feeds_for(graph, e.graph_input[:3], target=2))[0]
    for i in range(3):
        feeds = feeds_for(graph, e.graph_input[i : i + 1], target=2)
        alone = session.run(["attribution"], feeds)[0]
        np.testing.assert_allclose(alone[0], batch[i], rtol=1e-5, atol=1e-6 * np.abs(batch).max())


def test_repeated_runs_give_identical_maps(torchvision_exports: dict[str, Exported]) -> None:
    """ONNX Runtime runs the backward pass on several threads; its scatter-add into shared
    positions (ScatterND with reduction="add") loses updates between them, which is why the
    graphs route max-pooling's switches through ScatterElements and invert GatherND (AlexNet's
    adaptive pooling, whose indices repeat) with a MatMul: the maps must not vary."""
    e = torchvision_exports["alexnet"]
    graph = build_explanation(e.classifier, "deconvnet")
    session = ort_session(graph)
    feeds = feeds_for(graph, e.graph_input[:8], target=3)
    first = session.run(["attribution"], feeds)[0]
    for _ in range(3):
        assert np.array_equal(session.run(["attribution"], feeds)[0], first)

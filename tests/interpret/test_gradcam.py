"""Grad-CAM and guided Grad-CAM on the shipped CIFAR-10 models, against Captum's own engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam
from PIL import Image

from cnnzoo import zoo
from cnnzoo.interpret.attribution import GuidedBackprop
from cnnzoo.interpret.explain import explain
from cnnzoo.interpret.gradcam import GradCam, GuidedGradCam, cam_layer
from tests.interpret.helpers import flags, hooks_left

CIFAR = Path(__file__).resolve().parents[2] / "examples" / "cifar10"
# The layer Grad-CAM looks at by default: the last output with a spatial layout.
CAM_LAYERS = {"resnet20-cifar10": "layer3", "alexnet-cifar10": "features"}


@pytest.fixture(scope="module", params=sorted(CAM_LAYERS))
def cifar_model(request) -> tuple[str, torch.nn.Module, torch.Tensor]:
    name = request.param
    entry = zoo.get_entry(name)
    images = []
    for folder in ("cat", "dog", "ship"):
        with Image.open(next((CIFAR / folder).glob("*.png"))) as image:
            images.append(torch.from_numpy(entry.preprocess.apply(image)))
    return name, zoo.build_model(name, weights="default"), torch.stack(images)


def _captum_cam(model: torch.nn.Module, layer: str, x: torch.Tensor, target) -> torch.Tensor:
    cam = LayerGradCam(model, model.get_submodule(layer)).attribute(
        x.clone().requires_grad_(True), target=target, relu_attributions=True
    )
    size = tuple(x.shape[-2:])
    return LayerAttribution.interpolate(cam, size, interpolate_mode="bilinear").detach()


def test_default_layer_is_the_last_spatial_one(cifar_model) -> None:
    name, model, x = cifar_model
    assert cam_layer(model, x[:1]) == CAM_LAYERS[name]
    lenet = zoo.build_model("lenet5-mnist")
    assert cam_layer(lenet, torch.zeros(1, 1, 32, 32)) == "features.s4"  # c5 is 1x1


def test_grad_cam_equals_captums_layer_grad_cam(cifar_model) -> None:
    name, model, x = cifar_model
    target = torch.tensor([3, 5, 8])
    model.train()  # left as found: eval inside, train again after
    before = flags(model)
    ours = GradCam(model).attribute(x, target=target)
    assert flags(model) == before and hooks_left(model) == []
    model.eval()
    reference = _captum_cam(model, CAM_LAYERS[name], x, target)
    assert ours.shape == (3, 1, 32, 32)
    assert float(ours.abs().max()) > 0 and bool((ours >= 0).all())
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_guided_grad_cam_is_guided_backprop_times_grad_cam(cifar_model) -> None:
    _name, model, x = cifar_model
    target = torch.tensor([3, 5, 8])
    ours = GuidedGradCam(model).attribute(x, target=target)
    expected = GuidedBackprop(model).attribute(x, target=target) * GradCam(model).attribute(
        x, target=target
    )
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)


def test_explain_maps_grad_cam(cifar_model) -> None:
    name, model, x = cifar_model
    result = explain(model, x[:1], "grad-cam", target=3)
    expected = _captum_cam(model, CAM_LAYERS[name], x[:1], 3)[0, 0]
    np.testing.assert_allclose(result.attribution, expected.numpy(), rtol=0, atol=1e-6)
    guided = explain(model, x[:1], "guided-grad-cam", target=3)
    assert guided.attribution.shape == (32, 32) and guided.target == 3

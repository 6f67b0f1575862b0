"""`cnnzoo.interpret.explain.explain`, the function the CLI and the server's Explain RPC share."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cnnzoo import zoo
from cnnzoo.errors import InvalidInput, UnsupportedModel
from cnnzoo.interpret.attribution import Deconvnet, Gradient, GuidedBackprop
from cnnzoo.interpret.explain import METHODS, Explanation, explain
from tests.interpret.helpers import FunctionalRelu, flags, hooks_left
from tests.interpret.jobfiles import DIGITS


@pytest.fixture(scope="module")
def lenet_and_two() -> tuple[torch.nn.Module, torch.Tensor]:
    entry = zoo.get_entry("lenet5-mnist")
    with Image.open(DIGITS / "2" / "test-00001.png") as image:
        x = torch.from_numpy(entry.preprocess.apply(image)).unsqueeze(0)
    return zoo.build_model("lenet5-mnist", weights="default"), x


def test_methods_contract() -> None:
    assert METHODS == (
        "gradient",
        "deconvnet",
        "guided-backprop",
        "occlusion",
        "grad-cam",
        "guided-grad-cam",
        "input-x-gradient",
        "integrated-gradients",
    )


@pytest.mark.parametrize("method", METHODS)
def test_explanation_fields(lenet_and_two, method: str) -> None:
    model, x = lenet_and_two
    result = explain(model, x, method)
    assert isinstance(result, Explanation) and result.method == method
    with torch.no_grad():
        probabilities = torch.softmax(model(x), dim=1)[0]
    assert result.target == 2 == int(probabilities.argmax())
    assert result.score == pytest.approx(float(probabilities[2]), rel=1e-6)
    assert result.attribution.dtype == np.float32 and result.attribution.shape == (32, 32)
    assert np.abs(result.attribution).max() > 0
    with Image.open(io.BytesIO(result.png)) as picture:
        assert picture.format == "PNG" and picture.size == (32, 32)
    assert hooks_left(model) == []


@pytest.mark.parametrize(
    ("method", "cls"),
    [("gradient", Gradient), ("deconvnet", Deconvnet), ("guided-backprop", GuidedBackprop)],
)
def test_map_is_the_channel_sum_of_the_attribution(lenet_and_two, method: str, cls) -> None:
    model, x = lenet_and_two
    expected = cls(model).attribute(x, target=5)[0].sum(dim=0)
    assert np.array_equal(explain(model, x, method, target=5).attribution, expected.numpy())


def test_occlusion_map_is_a_probability_drop(lenet_and_two) -> None:
    model, x = lenet_and_two
    result = explain(model, x, "occlusion")
    # Hiding the stroke of a confidently classified digit lowers p(2) somewhere; the blank
    # border (padding) never matters.
    assert result.attribution.max() > 0.01
    assert float(np.abs(result.attribution).max()) <= 1.0


def test_rgb_torchvision_model_and_flags_restored() -> None:
    from torchvision.models import resnet18

    model = resnet18(num_classes=4)
    model.train()
    before = flags(model)
    result = explain(model, torch.randn(1, 3, 48, 48), "guided-backprop", target=1)
    assert result.attribution.shape == (48, 48) and result.target == 1
    assert flags(model) == before and hooks_left(model) == []


def test_inference_mode_caller(lenet_and_two) -> None:
    model, x = lenet_and_two
    with torch.inference_mode():
        result = explain(model, x, "deconvnet")
    assert result.target == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "lime"}, "valid methods: gradient, deconvnet, guided-backprop, occlusion"),
        ({"method": "gradient", "x": torch.zeros(1, 32, 32)}, "[1, C, H, W]"),
        ({"method": "gradient", "x": torch.zeros(2, 1, 32, 32)}, "[1, C, H, W]"),
        ({"method": "gradient", "x": torch.zeros(1, 1, 32, 32, dtype=torch.uint8)}, "float"),
        (
            {"method": "gradient", "target": 10},
            "target 10 is out of range: the model has 10 classes",
        ),
        ({"method": "gradient", "target": -1}, "out of range"),
    ],
)
def test_bad_input(lenet_and_two, kwargs, message: str) -> None:
    model, x = lenet_and_two
    kwargs = {"x": x, **kwargs}
    with pytest.raises(InvalidInput) as caught:
        explain(model, kwargs.pop("x"), **kwargs)
    assert message in caught.value.reason


def test_functional_relu_model_is_refused() -> None:
    model = FunctionalRelu().float()
    with pytest.raises(UnsupportedModel, match="nn.ReLU module"):
        explain(
            torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 4), model),
            torch.randn(1, 1, 2, 2),
            "guided-backprop",
        )

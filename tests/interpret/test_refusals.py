"""What the API refuses instead of answering wrongly: activations the ReLU rules do not cover,
modules that run twice, units, channels, images and targets out of range; and the warning when a
method's map cannot depend on the input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from cnnzoo import zoo
from cnnzoo.errors import InvalidInput, UnsupportedModel
from cnnzoo.interpret.attribution import Deconvnet, Gradient, GuidedBackprop
from cnnzoo.interpret.explain import explain
from cnnzoo.interpret.forward import forward_to
from cnnzoo.interpret.gradcam import GradCam, GuidedGradCam
from cnnzoo.interpret.occlusion import OcclusionSensitivity, occlusion_maps
from cnnzoo.interpret.projection import Unit, project_units
from cnnzoo.interpret.rules import Rule, input_independence
from cnnzoo.interpret.scan import scan_topk
from tests.interpret.helpers import DTYPE, ConvNet, OtherActivation, flags, hooks_left

CIFAR = Path(__file__).resolve().parents[2] / "examples" / "cifar10"


@pytest.mark.parametrize(
    "activation", [nn.ReLU6(), nn.LeakyReLU(0.1), nn.GELU(), nn.SiLU()], ids=type
)
@pytest.mark.parametrize("method", [Deconvnet, GuidedBackprop, GuidedGradCam])
def test_other_activations_are_refused_by_name_and_type(activation, method) -> None:
    model = OtherActivation(activation)
    before = flags(model)
    x = torch.randn(2, 4, dtype=DTYPE)
    kind = type(activation).__name__
    with pytest.raises(UnsupportedModel, match=rf"module 'act' is {kind}, an activation other"):
        method(model).attribute(x, target=0)
    assert hooks_left(model) == [] and flags(model) == before
    # The plain gradient is what these models have, and it is still given.
    assert Gradient(model).attribute(x, target=0).shape == x.shape


def test_functional_activation_is_refused() -> None:
    model = OtherActivation(nn.Identity(), functional=True)
    with pytest.raises(UnsupportedModel, match="calls gelu, an activation other than ReLU"):
        Deconvnet(model).attribute(torch.randn(1, 4, dtype=DTYPE), target=1)
    assert hooks_left(model) == []


@pytest.fixture(scope="module")
def reused() -> tuple[nn.Module, torch.Tensor]:
    from torchvision.models import resnet18

    return resnet18(num_classes=4).eval(), torch.randn(2, 3, 64, 64)


def test_a_module_that_runs_twice_is_refused_everywhere(reused) -> None:
    model, x = reused
    twice = "layer1.0.relu"  # torchvision's BasicBlock calls its ReLU twice
    message = rf"layer '{twice}' runs 2 times per forward pass"
    entry_points = [
        lambda: forward_to(model, [twice], x),
        lambda: project_units(model, twice, x, [Unit(0, 0, 1, 1)]),
        lambda: scan_topk(model, {twice: [0]}, [(x, torch.arange(2))]),
        lambda: occlusion_maps(model, x[:1], 0, twice, window=32, stride=32),
        lambda: GradCam(model, layer=twice).attribute(x, target=0),
    ]
    for call in entry_points:
        with pytest.raises(UnsupportedModel, match=message):
            call()
    assert hooks_left(model) == []
    # the block around it runs once and is fine
    assert forward_to(model, ["layer1.0"], x)["layer1.0"].shape == (2, 64, 16, 16)


@pytest.mark.parametrize(
    ("unit", "message"),
    [
        (Unit(0, 0, -1, -1), "must not be negative"),
        (Unit(2, 0, 0, 0), "image 2 out of range; 2 images given (0 to 1)"),
        (Unit(0, 3, 0, 0), "channel 3 out of range; layer 'conv1' has 3 channels (0 to 2)"),
        (Unit(0, 0, 6, 0), "outside layer 'conv1''s 6x6 output (y 0 to 5, x 0 to 5)"),
    ],
)
def test_units_are_bounds_checked(unit: Unit, message: str) -> None:
    model, x = ConvNet(), ConvNet.inputs(2)
    with pytest.raises(InvalidInput) as caught:
        project_units(model, "conv1", x, [unit])
    assert message in caught.value.reason
    assert hooks_left(model) == []


def test_scan_channels_are_bounds_checked() -> None:
    model, x = ConvNet(), ConvNet.inputs(2)
    with pytest.raises(InvalidInput, match=r"channel 3 out of range; layer 'conv1' has 3 channels"):
        scan_topk(model, {"conv1": [0, 3]}, [(x, torch.arange(2))])
    with pytest.raises(InvalidInput, match="indices >= 0"):
        scan_topk(model, {"conv1": [-1]}, [(x, torch.arange(2))])


@pytest.mark.parametrize("method", [Gradient, Deconvnet, GuidedBackprop, GradCam])
def test_targets_are_required_and_bounds_checked(method) -> None:
    model, x = ConvNet(), ConvNet.inputs(2)
    attributor = method(model) if method is not GradCam else method(model, layer="conv2")
    with pytest.raises(InvalidInput, match=r"a target is required: the model has 3 outputs"):
        attributor.attribute(x)
    with pytest.raises(InvalidInput, match=r"target 3 is out of range: the model has 3 outputs"):
        attributor.attribute(x, target=3)
    with pytest.raises(InvalidInput, match="3 targets for 2 examples"):
        attributor.attribute(x, target=[0, 1, 2])
    assert hooks_left(model) == []


def test_occlusion_targets_are_bounds_checked() -> None:
    model, x = ConvNet(), ConvNet.inputs(1)
    with pytest.raises(InvalidInput, match="target 5 is out of range"):
        OcclusionSensitivity(model, window=4, stride=4).attribute(x, target=5)
    with pytest.raises(InvalidInput, match="true class 7 is out of range: the model has 3"):
        occlusion_maps(model, x, 7, "conv2", window=4, stride=4)


@pytest.fixture(scope="module")
def cifar_images() -> torch.Tensor:
    entry = zoo.get_entry("resnet20-cifar10")
    images = []
    for folder in ("airplane", "cat", "frog", "truck"):
        with Image.open(next((CIFAR / folder).glob("*.png"))) as image:
            images.append(torch.from_numpy(entry.preprocess.apply(image)))
    return torch.stack(images)


def test_deconvnet_without_max_pooling_cannot_depend_on_the_input(cifar_images) -> None:
    resnet = zoo.build_model("resnet20-cifar10", weights="default")
    maps = Deconvnet(resnet).attribute(cifar_images, target=3)
    # INTERPRET-FACTS 6: the same map for four different images (up to float rounding) ...
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], rtol=1e-4, atol=1e-6)
    # ... and that is what the warning says, in explain's answer too.
    assert "no max-pooling" in Deconvnet(resnet).warnings()[0]
    result = explain(resnet, cifar_images[:1], "deconvnet")
    assert len(result.warnings) == 1 and "cannot depend on the input" in result.warnings[0]
    assert explain(resnet, cifar_images[:1], "guided-backprop").warnings == ()
    assert input_independence(resnet, Rule.GUIDED) is None
    # AlexNet has max-pooling: its deconvnet maps follow the switches, no warning.
    alexnet = zoo.build_model("alexnet-cifar10", weights="default")
    assert input_independence(alexnet, Rule.DECONVNET) is None
    alex_maps = Deconvnet(alexnet).attribute(cifar_images, target=3)
    assert not torch.allclose(alex_maps[0], alex_maps[1])


def test_a_linear_model_warns_for_every_rule() -> None:
    linear = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).to(DTYPE)
    for rule in Rule:
        assert "cannot depend on the input" in input_independence(linear, rule)


# -- `cnnzoo job --check` refuses what the run would refuse, naming the analysis ---------------


@pytest.fixture
def gelu_model(monkeypatch: pytest.MonkeyPatch) -> str:
    """A zoo entry whose architecture is LeNet-5 with GELU modules (registered for the test)."""
    from dataclasses import replace

    from cnnzoo.zoo import architectures, registry

    arch = replace(
        architectures.ARCHITECTURES["lenet5"],
        name="gelu-lenet5",
        builder="tests.interpret.helpers:gelu_lenet",
    )
    monkeypatch.setitem(architectures.ARCHITECTURES, arch.name, arch)
    entry = replace(
        zoo.get_entry("lenet5-mnist"), name="gelu-lenet5-digits", arch=arch.name, weights_dir=None
    )
    monkeypatch.setitem(registry._ENTRIES, entry.name, entry)
    return entry.name


def _check(tmp_path: Path, model: str, analyses: str, capsys) -> tuple[int, str]:
    from cnnzoo.cli import main
    from tests.interpret.jobfiles import DIGITS, write_job

    job = write_job(
        tmp_path,
        f'model = "{model}"\nweights = "none"\n[dataset]\nname = "{DIGITS}"\n{analyses}',
    )
    code = main(["job", str(job), "--check"])
    return code, capsys.readouterr().err


def test_job_check_refuses_rule_methods_on_other_activations(
    tmp_path: Path, gelu_model: str, capsys
) -> None:
    # the plain gradient, occlusion and Grad-CAM need no ReLU rule: fine
    fine = '[[analyses]]\nkind = "attributions"\nmethods = ["gradient", "occlusion", "grad-cam"]\n'
    assert _check(tmp_path, gelu_model, fine, capsys)[0] == 0
    for analyses, where in (
        ('[[analyses]]\nkind = "attributions"\nmethods = ["gradient", "deconvnet"]\n',
         "analyses[0] (attributions): method deconvnet:"),
        ('[[analyses]]\nkind = "filters"\n[[analyses]]\nkind = "max-activations"\n',
         "analyses[1] (max-activations): projection deconvnet:"),
        ('[[analyses]]\nkind = "randomisation"\nmethods = ["grad-cam", "guided-grad-cam"]\n',
         "analyses[0] (randomisation): method guided-grad-cam:"),
        ('[[analyses]]\nkind = "explanation-quality"\nmethods = ["guided-backprop"]\n',
         "analyses[0] (explanation-quality): method guided-backprop:"),
    ):  # fmt: skip
        code, err = _check(tmp_path, gelu_model, analyses, capsys)
        assert code == UnsupportedModel.exit_code, err
        assert where in err and "is GELU, an activation other than ReLU" in err, err
        assert err.count("\n") == 1
    # what the run itself would have said
    model = zoo.build_model(gelu_model, weights=None)
    with pytest.raises(UnsupportedModel, match="is GELU, an activation other than ReLU"):
        explain(model, torch.zeros(1, 1, 32, 32), "deconvnet")


def test_job_check_says_why_a_layer_that_runs_twice_is_refused(tmp_path: Path, capsys) -> None:
    # torchvision's ResNet-18 calls each block's ReLU module twice
    for analyses, where in (
        ('[[analyses]]\nkind = "occlusion"\nlayer = "layer1.0.relu"\n',
         "analyses[0] (occlusion): layer:"),
        ('[[analyses]]\nkind = "attributions"\nmethods = ["grad-cam"]\nlayer = "layer1.0.relu"\n',
         "analyses[0] (attributions): layer:"),
        ('[[analyses]]\nkind = "randomisation"\nlayers = ["fc", "layer1.0.relu"]\n',
         "analyses[0] (randomisation): layers:"),
    ):  # fmt: skip
        code, err = _check(tmp_path, "resnet18-imagenet", analyses, capsys)
        assert code != 0 and where in err, err
        assert (
            "layer 'layer1.0.relu' runs 2 times per forward pass, so it has no single output" in err
        )
        assert "layer1.0.conv1" in err  # the valid layers are listed

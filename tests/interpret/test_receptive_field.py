"""INTERPRET-FACTS 14: analytic receptive fields, cross-checked by the autograd support."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnzoo.errors import LayerNotFound, UnsupportedModel
from cnnzoo.interpret.layers import describe_layers, receptive_field
from cnnzoo.interpret.receptive_field import ReceptiveField, support_box
from tests.interpret.helpers import lenet_stack, slim_resnet50


def clipped(box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    top, left, bottom, right = box
    return max(top, 0), max(left, 0), min(bottom, size[0]), min(right, size[1])


CASES = [
    # conv5: 5 px; pool2: 5 + 1*1 = 6, stride 2; conv5: 6 + 4*2 = 14; pool2: 14 + 1*2 = 16, stride 4
    pytest.param(lenet_stack, "3", (1, 32, 32), 14, 2, (3, 3), id="lenet-conv2"),
    pytest.param(lenet_stack, "5", (1, 32, 32), 16, 4, (2, 2), id="lenet-pool2"),
    # torchvision AlexNet: conv1 11/4, pool 19/8, conv2 51/8, pool 67/16, conv3 99, conv4 131,
    # conv5 163/16, pool5 163 + 2*16 = 195/32 (the google-research tables)
    pytest.param("alexnet", "features.10", (3, 224, 224), 163, 16, (6, 6), id="alexnet-conv5"),
    pytest.param("alexnet", "features.12", (3, 224, 224), 195, 32, (3, 3), id="alexnet-pool5"),
    # TF-slim ResNet-50 (subsampling in the last unit of a stage): 483 px at stride 32, as tabled
    pytest.param(slim_resnet50, "19", (3, 544, 544), 483, 32, (8, 8), id="resnet50-slim"),
    # torchvision ResNet-50 subsamples in the *first* unit of a stage: stem 11/4, layer1
    # 11 + 3*2*4 = 35, layer2 35 + 2*4 + 3*2*8 = 91/8, layer3 91 + 16 + 5*32 = 267/16,
    # layer4 267 + 32 + 2*64 = 427/32
    pytest.param("resnet50", "layer4", (3, 512, 512), 427, 32, (8, 8), id="resnet50-torchvision"),
]


def build(make):
    if isinstance(make, str):
        import torchvision

        return getattr(torchvision.models, make)().eval()
    return make()


@pytest.mark.parametrize(("make", "layer", "shape", "size", "stride", "unit"), CASES)
def test_fact14_receptive_field(make, layer, shape, size, stride, unit) -> None:
    model = build(make)
    field = receptive_field(model, layer, (shape[0], 64, 64) if shape[1] > 64 else shape)
    assert field.size == (size, size) and field.stride == (stride, stride)
    # The autograd support of one unit (ReLU -> identity, max -> average pooling) agrees.
    expected = clipped(field.box(*unit), shape[1:])
    assert support_box(model, layer, shape[1:], unit) == expected


def test_support_box_clips_at_the_border() -> None:
    model = lenet_stack()
    field = receptive_field(model, "5", (1, 32, 32))
    assert field == ReceptiveField(size=(16, 16), stride=(4, 4), offset=(0, 0))
    import torchvision

    alexnet = torchvision.models.alexnet().eval()
    conv1 = receptive_field(alexnet, "features.0", (3, 224, 224))
    assert conv1 == ReceptiveField(size=(11, 11), stride=(4, 4), offset=(-2, -2))
    assert support_box(alexnet, "features.0", (224, 224), (0, 0)) == (0, 0, 9, 9)


def test_layers_table_formula_and_reuse() -> None:
    import torchvision

    infos = {
        info.name: info for info in describe_layers(torchvision.models.resnet18(), (3, 224, 224))
    }
    conv1 = infos["conv1"]
    assert conv1.output_shape == (64, 112, 112) and conv1.params == 64 * 3 * 7 * 7
    assert conv1.formula == "(224-7+2*3)/2+1=112"
    assert infos["layer1.0.relu"].calls == 2 and not infos["layer1.0.relu"].selectable
    assert infos["layer4"].receptive_field is not None and infos["fc"].receptive_field is None
    with pytest.raises(UnsupportedModel, match="runs 2 times"):
        receptive_field(torchvision.models.resnet18(), "layer1.0.relu", (3, 64, 64))
    with pytest.raises(UnsupportedModel, match="no spatial receptive field"):
        receptive_field(torchvision.models.resnet18(), "fc", (3, 64, 64))


def test_unknown_layer_lists_valid_names() -> None:
    with pytest.raises(LayerNotFound) as err:
        receptive_field(lenet_stack(), "conv9", (1, 32, 32))
    assert "valid layers: 0, 1, 2, 3, 4, 5" in err.value.reason


def test_untraceable_model_is_refused() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) if x.sum() > 0 else x

    with pytest.raises(UnsupportedModel, match="cannot trace"):
        describe_layers(Branchy(), (1, 8, 8))

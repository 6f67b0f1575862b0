import json

import pytest
import torch
from torch import nn

from cnnzoo import zoo
from cnnzoo.zoo.architectures import get_architecture, list_architectures


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", zoo.list_models())
def test_output_shape_and_eval_mode(name):
    entry = zoo.get_entry(name)
    model = zoo.build_model(name)
    assert not model.training
    batch = 2 if entry.input_shape[-1] <= 32 else 1
    with torch.inference_mode():
        logits = model(torch.randn(batch, *entry.input_shape))
    assert logits.shape == (batch, entry.num_classes)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", zoo.list_models())
def test_relus_are_modules_not_functions(name):
    """interpret/ hooks nn.ReLU modules: a functional relu would escape it."""
    graph = torch.fx.symbolic_trace(zoo.build_model(name)).graph
    functional = [
        node.target
        for node in graph.nodes
        if node.op in ("call_function", "call_method") and "relu" in str(node.target)
    ]
    assert functional == []
    assert any(isinstance(m, nn.ReLU) for m in zoo.build_model(name).modules())


def test_lenet5_has_61706_parameters_and_the_paper_layers():
    model = zoo.build_model("lenet5-mnist")
    assert _params(model) == 61_706
    f = model.features
    assert (f.c1.in_channels, f.c1.out_channels, f.c1.kernel_size) == (1, 6, (5, 5))
    assert (f.c3.out_channels, f.c3.kernel_size) == (16, (5, 5))
    assert f.c5.out_channels == 120
    assert model.classifier.f6.out_features == 84
    assert isinstance(f.s2, nn.MaxPool2d) and isinstance(f.s4, nn.MaxPool2d)
    # 32 -> C1 28 -> S2 14 -> C3 10 -> S4 5 -> C5 1
    assert model.features(torch.zeros(1, 1, 32, 32)).shape == (1, 120, 1, 1)


def test_resnet20_is_he_et_al_cifar_resnet():
    model = zoo.build_model("resnet20-cifar10")
    assert 0.26e6 < _params(model) < 0.28e6
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 19  # + the fc layer = 20 weighted layers; option-A shortcuts add none
    widths = sorted({c.out_channels for c in convs})
    assert widths == [16, 32, 64]


def test_option_a_shortcut_is_subsample_and_zero_pad():
    from cnnzoo.zoo.resnet import PadShortcut

    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    out = PadShortcut(extra_channels=2)(x)
    assert out.shape == (1, 4, 2, 2)
    # new channels are split evenly before and after the old ones (He et al.'s option A)
    assert torch.equal(out[0, 0], torch.zeros(2, 2))
    assert torch.equal(out[0, 1], torch.tensor([[0.0, 2.0], [8.0, 10.0]]))
    assert torch.equal(out[0, 2], torch.tensor([[16.0, 18.0], [24.0, 26.0]]))
    assert torch.equal(out[0, 3], torch.zeros(2, 2))


def test_alexnet_cifar_has_five_convs_three_linears_and_dropout():
    model = zoo.build_model("alexnet-cifar10")
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 5
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 3
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3


def test_imagenet_entries_are_torchvision_architectures():
    from torchvision import models

    for name, builder in (
        ("alexnet-imagenet", models.alexnet),
        ("resnet18-imagenet", models.resnet18),
        ("resnet50-imagenet", models.resnet50),
    ):
        ours = zoo.build_model(name).state_dict()
        theirs = builder(weights=None).state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


def test_torchvision_pth_state_dict_loads_for_torchvision_entries(tmp_path):
    from torchvision import models

    source = models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = zoo.build_model("resnet18-imagenet", weights=path)
    assert torch.equal(model.fc.weight, source.fc.weight)


@pytest.mark.parametrize("name", list_architectures())
def test_every_architecture_builds_for_any_classes_and_its_smallest_input(name):
    arch = get_architecture(name)
    side = arch.fixed_input or arch.min_input
    for channels in arch.channels:
        torch.manual_seed(0)
        model = arch.build(num_classes=7, in_channels=channels).eval()
        with torch.inference_mode():
            assert model(torch.randn(1, channels, side, side)).shape == (1, 7)
        assert _params(model) == arch.parameter_count(7, channels)  # the meta-device count
        head = model.get_submodule(arch.head)
        assert isinstance(head, nn.Linear) and head.out_features == 7
    assert arch.takes_input_size(side) and not arch.takes_input_size(side - 1)


def test_the_minimum_input_is_where_the_forward_pass_stops_working():
    model = get_architecture("alexnet").build(num_classes=3).eval()
    with torch.inference_mode(), pytest.raises(RuntimeError):
        model(torch.randn(1, 3, 62, 62))  # the third max-pool needs a 3x3 map; 63 px give it


def test_presets_are_architectures_bound_to_data():
    for name in zoo.list_models():
        entry = zoo.get_entry(name)
        assert entry.spec.name == entry.arch and entry.family == entry.spec.family
        assert entry.spec.takes_input_size(entry.input_shape[-1])
    assert zoo.get_entry("resnet20-cifar10").recipe == get_architecture("resnet20").recipe


def test_list_architectures_prints_parameter_counts(capsys):
    from cnnzoo.cli import main

    assert main(["list", "--architectures", "--classes", "5", "--channels", "1", "--json"]) == 0
    rows = {row["arch"]: row for row in map(json.loads, capsys.readouterr().out.splitlines())}
    assert list(rows) == list_architectures()
    assert rows["lenet5"]["params"] == 61_706 - 5 * 85  # five of the ten output units
    assert rows["resnet18"]["fixed_input"] is None and rows["resnet18"]["min_input"] == 32
    assert main(["list", "--architectures", "resnet*", "--input-size", "28"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["ARCH", "FAMILY", "INPUT", "PARAMS"]
    table = {line.split()[0]: line for line in lines[1:]}
    assert set(table) == {"resnet20", "resnet32", "resnet44", "resnet56", "resnet18", "resnet34",
                          "resnet50"}  # fmt: skip
    assert "(not 28)" in table["resnet18"] and "(not 28)" not in table["resnet20"]
    assert "11,181,642" in table["resnet18"]  # torchvision's ResNet-18 with a 10-way head


@pytest.mark.parametrize("argv", [["list", "nope"], ["list", "--architectures", "vgg*"]])
def test_a_pattern_that_matches_nothing_is_an_error(capsys, argv):
    from cnnzoo.cli import main

    assert main(argv) == 3
    captured = capsys.readouterr()
    assert captured.out == ""
    what = "model" if len(argv) == 2 else "architecture"
    assert captured.err.startswith(f"cnnzoo list: error: no {what} matches")

import dataclasses

import pytest

from cnnzoo import zoo
from cnnzoo.errors import AlreadyExists, NotFound
from cnnzoo.zoo.registry import WEIGHTS_ROOT

EXPECTED = [
    "alexnet-cifar10",
    "alexnet-imagenet",
    "lenet5-mnist",
    "resnet18-imagenet",
    "resnet20-cifar10",
    "resnet50-imagenet",
]


def test_list_models_is_sorted_and_complete():
    assert zoo.list_models() == EXPECTED


def test_list_models_filters_with_globs():
    assert zoo.list_models(include="resnet*") == [
        "resnet18-imagenet",
        "resnet20-cifar10",
        "resnet50-imagenet",
    ]
    assert zoo.list_models(include=["*cifar10", "lenet*"], exclude="alexnet*") == [
        "lenet5-mnist",
        "resnet20-cifar10",
    ]
    assert zoo.list_models(include="nothing-*") == []


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(NotFound) as err:
        zoo.get_entry("lenet6-mnist")
    assert "lenet6-mnist" in err.value.reason
    for name in EXPECTED:
        assert name in err.value.reason


def test_registering_a_name_twice_is_refused():
    entry = zoo.get_entry("lenet5-mnist")
    with pytest.raises(AlreadyExists):
        zoo.register_model(entry)
    assert zoo.list_models() == EXPECTED


def test_entries_are_frozen_and_consistent():
    entry = zoo.get_entry("lenet5-mnist")
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.name = "other"  # type: ignore[misc]
    for name in zoo.list_models():
        entry = zoo.get_entry(name)
        assert entry.family in ("lenet", "alexnet", "resnet")
        assert entry.dataset in ("mnist", "cifar10", "imagenet")
        assert len(entry.labels) == entry.num_classes
        assert entry.input_shape == (entry.preprocess.channels, *entry.preprocess.input_size)


def test_documented_input_shapes():
    assert zoo.get_entry("lenet5-mnist").input_shape == (1, 32, 32)
    assert zoo.get_entry("alexnet-cifar10").input_shape == (3, 32, 32)
    assert zoo.get_entry("resnet20-cifar10").input_shape == (3, 32, 32)
    for name in ("alexnet-imagenet", "resnet18-imagenet", "resnet50-imagenet"):
        assert zoo.get_entry(name).input_shape == (3, 224, 224)


def test_imagenet_labels_are_torchvision_categories():
    from torchvision.models import ResNet50_Weights

    categories = ResNet50_Weights.IMAGENET1K_V2.meta["categories"]
    assert list(zoo.get_entry("resnet50-imagenet").labels) == categories


def test_cifar10_labels_follow_batches_meta(cifar10_binary):
    meta = (cifar10_binary / "batches.meta.txt").read_text().split()
    assert list(zoo.get_entry("resnet20-cifar10").labels) == meta


def test_lenet5_ships_weights_in_the_package():
    entry = zoo.get_entry("lenet5-mnist")
    assert entry.weights_dir == WEIGHTS_ROOT / "lenet5-mnist"
    assert entry.weights_file is not None and entry.weights_file.is_file()


def test_import_zoo_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; from cnnzoo import zoo; zoo.list_models(); "
        "zoo.get_entry('lenet5-mnist').card(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

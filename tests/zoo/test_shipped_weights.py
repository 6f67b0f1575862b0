"""The weights the package ships: produced by `cnnzoo train`, with cards that `cnnzoo eval`
reproduces on the real test sets."""

import json
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest

from cnnzoo import zoo
from cnnzoo.cli import main
from cnnzoo.fileio import sha256_file
from cnnzoo.zoo.card import validate_card
from cnnzoo.zoo.checkpoints import list_epochs

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# name: (dataset folder, training images, accuracy floor, epochs kept beside the final weights)
SHIPPED = {
    "lenet5-mnist": ("MNIST", 60_000, 0.992, "all"),
    "resnet20-cifar10": ("cifar-10-batches-bin", 50_000, 0.88, (1, 2, 5, 10, 20, 30, 40, 80)),
    # 7.5 M parameters (7.2 MiB per file in int8): only the final weights are shipped.
    "alexnet-cifar10": ("cifar-10-batches-bin", 50_000, 0.88, ()),
}
# Cards measured on a GPU (cuDNN's TF32 convolutions) may differ from a CPU evaluation by a few
# borderline images out of 10,000; CPU-trained cards reproduce exactly.
GPU_TOLERANCE = 5 / 10_000


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_card_matches_the_weights_and_the_recipe(name):
    folder, n_train, floor, epochs = SHIPPED[name]
    entry = zoo.get_entry(name)
    card = entry.card()
    assert card is not None and validate_card(card) == []
    assert card["weights"]["sha256"] == sha256_file(entry.weights_file)
    # the card travels with the package: no path of the machine it was trained on
    assert not PurePosixPath(card["dataset"]["folder"]).is_absolute()
    assert not PureWindowsPath(card["dataset"]["folder"]).is_absolute()
    assert card["dataset"]["folder"] == folder
    assert card["metrics"]["top1"] >= floor
    assert card["metrics"]["n"] == 10_000 and card["dataset"]["n_train"] == n_train
    assert card["dataset"]["train_subset"] is None and card["dataset"]["test_subset"] is None
    assert card["command"].startswith(f"cnnzoo train {name}")
    # `cnnzoo train NAME` uses the recipe the card was made with
    assert card["recipe"] == entry.recipe.to_dict()
    kept = [e for e, _ in list_epochs(entry.weights_dir)]
    assert kept == (list(range(1, card["epochs"] + 1)) if epochs == "all" else list(epochs))


def test_cifar_cards_say_the_images_are_a_jpeg_copy():
    for name in ("resnet20-cifar10", "alexnet-cifar10"):
        card = zoo.get_entry(name).card()
        assert "JPEG" in card["dataset"]["source"]
        assert card["dataset"]["source_sha256"]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_eval_reproduces_the_card(name, capsys, data_dir):
    card = zoo.get_entry(name).card()
    # every core (the zoo tests otherwise keep torch on one): the same top-1 in half the time
    assert main(["eval", name, "--json", "--threads", str(os.cpu_count() or 1)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 10_000
    assert report["top1"] >= SHIPPED[name][2]
    tolerance = GPU_TOLERANCE if card["hardware"]["device"] == "cuda" else 0.0
    assert abs(report["top1"] - card["metrics"]["top1"]) <= tolerance


def test_example_digits_are_real_mnist_and_classified(capsys, data_dir):
    import numpy as np
    from PIL import Image
    from torchvision.datasets import MNIST

    digits = EXAMPLES / "digits"
    files = sorted(digits.glob("*/*.png"))
    assert len(files) == 20
    mnist = MNIST(str(data_dir), train=False)
    for path in files:
        index = int(path.stem.split("-")[1])
        image = Image.open(path)
        assert image.mode == "L" and image.size == (28, 28)
        assert np.array_equal(np.asarray(image), mnist.data[index].numpy())
        assert int(mnist.targets[index]) == int(path.parent.name)
    assert main(["eval", "lenet5-mnist", "--dataset", str(digits), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] >= 0.95


def test_example_cifar10_images_are_the_first_test_image_of_each_class(data_dir):
    import numpy as np
    from PIL import Image

    from cnnzoo.zoo.datasets import get_dataset

    test_set = get_dataset("cifar10", "test")
    files = sorted((EXAMPLES / "cifar10").glob("*/*.png"))
    assert sorted(p.parent.name for p in files) == sorted(zoo.get_entry("alexnet-cifar10").labels)
    for path in files:
        index = int(path.stem.split("-")[1])
        label = test_set.targets[index]
        assert test_set.classes[label] == path.parent.name
        # the first of its class: the examples are not picked for being classified right
        assert label not in test_set.targets[:index]
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), test_set.data[index])

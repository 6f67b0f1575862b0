"""The LeNet-5 weights the package ships: produced by `cnnzoo train`, with their card."""

import json
from pathlib import Path, PurePosixPath, PureWindowsPath

import zoo
from cnnzoo.cli import main
from zoo.card import validate_card
from zoo.checkpoints import list_epochs
from zoo.fileio import sha256_file

ENTRY = zoo.get_entry("lenet5-mnist")


def test_card_matches_the_weights_and_the_target():
    card = ENTRY.card()
    assert card is not None and validate_card(card) == []
    assert card["weights"]["sha256"] == sha256_file(ENTRY.weights_file)
    # the card travels with the package: no path of the machine it was trained on
    folder = card["dataset"]["folder"]
    assert not PurePosixPath(folder).is_absolute() and not PureWindowsPath(folder).is_absolute()
    assert folder == "MNIST"
    assert card["metrics"]["top1"] >= 0.992
    assert card["metrics"]["n"] == 10_000 and card["dataset"]["n_train"] == 60_000
    assert card["dataset"]["train_subset"] is None and card["dataset"]["test_subset"] is None
    assert card["command"].startswith("cnnzoo train lenet5-mnist")
    assert [e for e, _ in list_epochs(ENTRY.weights_dir)] == list(range(1, card["epochs"] + 1))


def test_shipped_weights_reach_99_2_percent_on_the_mnist_test_set(capsys):
    assert main(["eval", "lenet5-mnist", "--json", "--threads", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 10_000
    assert report["top1"] >= 0.992
    assert report["top1"] == ENTRY.card()["metrics"]["top1"]


def test_example_digits_are_real_mnist_and_classified(capsys):
    import os

    import numpy as np
    from PIL import Image
    from torchvision.datasets import MNIST

    digits = Path(__file__).resolve().parents[2] / "examples" / "digits"
    files = sorted(digits.glob("*/*.png"))
    assert len(files) == 20
    mnist = MNIST(os.environ["CNNZOO_DATA"], train=False)
    for path in files:
        index = int(path.stem.split("-")[1])
        image = Image.open(path)
        assert image.mode == "L" and image.size == (28, 28)
        assert np.array_equal(np.asarray(image), mnist.data[index].numpy())
        assert int(mnist.targets[index]) == int(path.parent.name)
    assert main(["eval", "lenet5-mnist", "--dataset", str(digits), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] >= 0.95

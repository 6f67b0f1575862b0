"""`--lr auto` and the other defaults chosen for an image folder.

The range test is run for real on MNIST digits with LeNet-5: the same seed picks the same rate,
another seed draws other batches, and the model comes back exactly as it was. The folder
defaults are checked against choices worked out by hand."""

from __future__ import annotations

import pytest
import torch

from cnnzoo import zoo
from cnnzoo.zoo.architectures import get_architecture
from cnnzoo.zoo.datasets import get_dataset
from cnnzoo.zoo.evaluate import limit_dataset
from cnnzoo.zoo.folder_defaults import folder_defaults
from cnnzoo.zoo.loop import loader_batches
from cnnzoo.zoo.lr_range import lr_range_test


@pytest.fixture(scope="module")
def digits(data_dir):
    entry = zoo.get_entry("lenet5-mnist")
    data = get_dataset(
        "mnist", "train", data_dir=data_dir, transform=entry.preprocess.torch_transform()
    )
    return entry, limit_dataset(data, 640, seed=0)


def _range_test(entry, data, model, seed):
    torch.manual_seed(seed)
    batches = loader_batches(
        data, batch_size=32, generator=torch.Generator().manual_seed(seed), workers=0, pin=False
    )
    return lr_range_test(model, entry.recipe, batches, head=entry.spec.head, steps=60)


def test_the_range_test_is_fixed_by_its_seed_and_leaves_the_model_as_it_was(digits):
    entry, data = digits
    torch.manual_seed(0)
    model = entry.build()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    first = _range_test(entry, data, model, seed=1)
    again = _range_test(entry, data, model, seed=1)
    other = _range_test(entry, data, model, seed=2)
    assert first == again and first.curve != other.curve
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.training  # its mode is restored too
    # LeNet-5's loss breaks down at high rates: the pick is half a decade below the rate of
    # the lowest smoothed loss, four significant digits
    assert first.broke_down
    assert first.lr == float(f"{first.min_loss_lr / 10**0.5:.4g}")
    assert first.start <= first.min_loss_lr <= first.end and 1e-3 < first.lr < 1.0
    losses = [loss for _, loss in first.curve]
    assert first.min_loss <= min(losses) and losses[0] > first.min_loss  # it found a descent
    record = first.record()
    assert record["lr"] == first.lr and record["steps"] == first.steps <= 60


def test_a_loss_that_never_breaks_down_keeps_the_recipes_rate(digits):
    entry, data = digits
    torch.manual_seed(0)
    model = entry.build()
    # up to 1e-3 LeNet-5 barely learns: nothing bounds the rate, the fallback is kept
    batches = loader_batches(
        data, batch_size=32, generator=torch.Generator().manual_seed(1), workers=0, pin=False
    )
    test = lr_range_test(model, entry.recipe, batches, end=1e-3, steps=30, fallback=0.05)
    assert not test.broke_down and test.lr == 0.05 and test.steps == 30
    assert "recipe's rate is kept" in test.record()["rule"]


@pytest.mark.parametrize(
    "arch, colour, n_train, pretrained, freeze, expected",
    [
        # grey glyphs from scratch: LeNet-5's 20 epochs; 128 -> 64 -> 32: 81 images / 32 < 16
        # -> 16 -> 8 (the floor)
        ("lenet5", "L", 81, False, False,
         {"augment": "small-affine", "epochs": 20, "batch_size": 8, "backbone_lr_scale": 1.0}),
        # colour, 50,000 images: ResNet-20's 80 epochs capped at 30, batch 128 kept
        ("resnet20", "RGB", 50_000, False, False,
         {"augment": "crop-flip", "epochs": 30, "batch_size": 128, "backbone_lr_scale": 1.0}),
        # fine-tuning torchvision's ResNet-18: 10 epochs, batch 64 (1,000 / 64 = 15.6 < 16 ->
        # 32), the backbone at a tenth of the head's rate, one-cycle instead of the step schedule
        ("resnet18", "RGB", 1_000, True, False,
         {"augment": "crop-flip", "epochs": 10, "batch_size": 32, "backbone_lr_scale": 0.1,
          "schedule": "onecycle"}),
        # a frozen backbone has no rate of its own
        ("resnet18", "L", 5_000, True, True,
         {"augment": "small-affine", "epochs": 10, "batch_size": 64, "backbone_lr_scale": 1.0}),
    ],
)  # fmt: skip
def test_folder_defaults(arch, colour, n_train, pretrained, freeze, expected):
    defaults = folder_defaults(
        get_architecture(arch), colour=colour, n_train=n_train, pretrained=pretrained,
        freeze=freeze,
    )  # fmt: skip
    recipe = defaults.recipe
    assert {key: getattr(recipe, key) for key in expected} == expected
    assert recipe.schedule == "onecycle" and defaults.lr_auto
    chosen = {key: value["value"] for key, value in defaults.chosen.items()}
    assert {k: v for k, v in chosen.items() if k != "schedule"} == {
        k: v
        for k, v in expected.items()
        if k != "schedule" and (k != "backbone_lr_scale" or v != 1.0)
    }
    assert all(value["why"] for value in defaults.chosen.values())


def test_flags_win_over_the_folder_defaults():
    defaults = folder_defaults(
        get_architecture("resnet20"), colour="RGB", n_train=100, pretrained=True,
        augment="none", epochs=3, batch_size=50, lr=0.02, backbone_lr_scale=0.5,
    )  # fmt: skip
    recipe = defaults.recipe
    assert (recipe.augment, recipe.epochs, recipe.batch_size, recipe.lr) == ("none", 3, 50, 0.02)
    assert recipe.backbone_lr_scale == 0.5 and not defaults.lr_auto
    assert defaults.chosen == {}  # resnet20's recipe is one-cycle already: nothing was chosen

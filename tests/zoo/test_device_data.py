"""Device-resident training data (`cnnzoo.zoo.device_data`), run on the CPU.

The same code runs on CUDA (tests/gpu checks that its batches equal these there). Here: the
pixels and normalisation equal the loader path's bit for bit, the crop and flip equal
torchvision's `pad`/`crop`/`hflip` for the same offsets, their statistics are those of
`RandomCrop(32, padding=4)` + `RandomHorizontalFlip()`, an epoch is a function of its seed, and
`evaluate` gives the loader path's metrics on the device-resident test split.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset
from torchvision.transforms import functional as TF

from cnnzoo.errors import InvalidInput
from cnnzoo.zoo.catalogue import CIFAR10_PREPROCESS, MNIST_PREPROCESS
from cnnzoo.zoo.cuda_training import CudaTraining
from cnnzoo.zoo.datasets import get_dataset
from cnnzoo.zoo.device_data import (
    CROP_PADDING,
    DeviceData,
    DeviceSplit,
    EpochDraws,
    augment_batch,
    dataset_pixels,
)
from cnnzoo.zoo.evaluate import evaluate
from cnnzoo.zoo.registry import build_model, get_entry
from cnnzoo.zoo.resnet import resnet20_cifar


@pytest.fixture(scope="module")
def cifar_train(cifar10_binary):
    return get_dataset("cifar10", "train", transform=CIFAR10_PREPROCESS.torch_transform())


def _loader_images(dataset, indices):
    """What the loader path gives for `indices` (the dataset's transform is the entry's)."""
    return torch.stack([dataset[i][0] for i in indices])


def test_pixels_and_normalisation_equal_the_loader_paths_bit_for_bit(cifar_train, data_dir):
    subset = Subset(Subset(cifar_train, range(0, 600, 2)), range(10, 60))  # nested subsets too
    pixels, labels = dataset_pixels(subset, CIFAR10_PREPROCESS)
    assert pixels.shape == (50, 3, 32, 32) and pixels.dtype == torch.uint8
    assert labels.tolist() == [cifar_train.targets[i] for i in range(20, 120, 2)]
    split = DeviceSplit(pixels, labels, CIFAR10_PREPROCESS, "none", "cpu")
    images, targets = next(iter(split.batches(64, 0, shuffle=False)))
    expected = _loader_images(subset, range(50))
    assert torch.equal(images, expected) and torch.equal(targets, labels)
    assert images.is_contiguous(memory_format=torch.channels_last)

    # MNIST: 28x28, padded by 2 to 32x32
    mnist = get_dataset(
        "mnist", "test", data_dir=data_dir, transform=MNIST_PREPROCESS.torch_transform()
    )
    pixels, _ = dataset_pixels(Subset(mnist, range(8)), MNIST_PREPROCESS)
    split = DeviceSplit(pixels, torch.zeros(8, dtype=torch.int64), MNIST_PREPROCESS, "none", "cpu")
    images, _ = next(iter(split.batches(8, 0, shuffle=False)))
    expected = _loader_images(mnist, range(8))
    assert images.shape == (8, 1, 32, 32) and torch.equal(images, expected)


def test_crop_and_flip_equal_torchvisions_for_the_same_offsets(cifar_train):
    pixels, labels = dataset_pixels(Subset(cifar_train, range(12)), CIFAR10_PREPROCESS)
    split = DeviceSplit(pixels, labels, CIFAR10_PREPROCESS, "cifar-crop-flip", "cpu")
    top = torch.tensor([0, 8, 4, 3, 0, 8, 1, 7, 2, 6, 5, 4])
    left = torch.tensor([0, 8, 4, 5, 8, 0, 2, 6, 3, 1, 7, 4])
    flip = torch.tensor([False, True] * 6)
    ours = split.normalise(augment_batch(split.padded[:12], top, left, flip))
    to_tensor = CIFAR10_PREPROCESS.torch_transform().transforms[-2:]  # ToTensor, Normalize
    for i in range(12):
        pil = TF.to_pil_image(cifar_train.data[i])
        cropped = TF.crop(TF.pad(pil, CROP_PADDING, fill=0), int(top[i]), int(left[i]), 32, 32)
        if flip[i]:
            cropped = TF.hflip(cropped)
        expected = to_tensor[1](to_tensor[0](cropped))
        assert torch.equal(ours[i], expected), i
    # offset 4 without a flip (image 2) is the image itself
    assert torch.equal(ours[2], split.normalise(pixels[2:3])[0])


def test_an_epoch_is_a_function_of_its_seed(cifar_train):
    pixels, labels = dataset_pixels(Subset(cifar_train, range(300)), CIFAR10_PREPROCESS)
    split = DeviceSplit(pixels, labels, CIFAR10_PREPROCESS, "cifar-crop-flip", "cpu")
    first = list(split.batches(128, 7, shuffle=True))
    again = list(split.batches(128, 7, shuffle=True))
    other = list(split.batches(128, 8, shuffle=True))
    assert [len(t) for _, t in first] == [128, 128, 44]  # the last batch is kept, as the loader
    assert all(
        torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        for a, b in zip(first, again, strict=True)
    )
    assert not torch.equal(first[0][0], other[0][0])
    seen = torch.cat([t for _, t in first])
    assert sorted(seen.tolist()) == sorted(labels.tolist())  # every image once
    draws = EpochDraws.draw(300, 7, shuffle=True, augment="cifar-crop-flip")
    assert sorted(draws.order.tolist()) == list(range(300))


def test_crop_offsets_and_flips_have_randomcrop_and_randomflips_distribution():
    count = 90_000
    draws = EpochDraws.draw(count, 0, shuffle=True, augment="cifar-crop-flip")
    for offsets in (draws.top, draws.left):
        frequencies = torch.bincount(offsets, minlength=9).double() / count
        assert offsets.min() == 0 and offsets.max() == 2 * CROP_PADDING
        # 9 equally likely offsets, as torch.randint(0, 40 - 32 + 1) in RandomCrop.get_params
        assert torch.all((frequencies - 1 / 9).abs() < 0.006), frequencies
    assert abs(draws.flip.double().mean().item() - 0.5) < 0.006
    # rows and columns are drawn independently of each other and of the flip
    joint = torch.bincount(draws.top * 9 + draws.left, minlength=81).double() / count
    assert torch.all((joint - 1 / 81).abs() < 0.003)
    none = EpochDraws.draw(10, 0, shuffle=False, augment="none")
    assert none.order.tolist() == list(range(10))
    assert set(none.top.tolist()) == set(none.left.tolist()) == {CROP_PADDING}
    assert not none.flip.any()


def test_evaluation_on_the_device_split_equals_the_loader_path(cifar10_binary, data_dir):
    entry = get_entry("resnet20-cifar10")
    model = build_model(entry, weights="default")
    test = Subset(entry.open_dataset("test", data_dir=data_dir), range(300))
    train = Subset(entry.open_dataset("train", data_dir=data_dir), range(10))
    data = DeviceData.load(train, test, entry.preprocess, "cifar-crop-flip", "cpu")
    loader = DataLoader(test, batch_size=256, shuffle=False)
    expected = evaluate(model, loader, entry.labels)
    got = evaluate(model, data.test_batches(), entry.labels)
    # the same images; channels_last convolutions may round the last bit of a logit differently
    assert got.pop("loss") == pytest.approx(expected.pop("loss"), rel=1e-5)
    assert got == expected and got["n"] == 300


def test_the_loader_path_serves_what_the_device_cannot(cifar10_binary, data_dir, tmp_path):
    entry = get_entry("resnet20-cifar10")
    test = entry.open_dataset("test", data_dir=data_dir)
    args = (test, test, entry.preprocess)
    assert DeviceData.for_run(*args, "cifar-crop-flip", "cpu") is None  # CUDA only
    assert DeviceData.for_run(*args, "mnist-affine", "cuda") is None  # a PIL augmentation
    # an image folder has no pixel array
    (tmp_path / "a").mkdir()
    TF.to_pil_image(test.data[0]).save(tmp_path / "a" / "x.png")
    folder = get_dataset(str(tmp_path), "train")
    assert dataset_pixels(folder, entry.preprocess) is None
    # the wrong colour mode would need a conversion
    assert dataset_pixels(test, MNIST_PREPROCESS) is None
    with pytest.raises(ValueError, match="not done on the device"):
        DeviceSplit(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.zeros(1), entry.preprocess,
                    "imagenet", "cpu")  # fmt: skip


def test_cuda_training_settings_parse_strictly():
    assert CudaTraining.parse("") == CudaTraining()
    settings = CudaTraining.parse("bf16=0, compile=reduce-overhead,channels-last=off")
    assert settings == CudaTraining(channels_last=False, bf16=False, compile="reduce-overhead")
    assert not CudaTraining.parse("device_data=no").device_data
    assert CudaTraining.parse(settings.to_text()) == settings
    for bad, problem in (
        ("bf16", "key=value"),
        ("speed=1", "key=value"),
        ("bf16=maybe", "bf16 must be 1 or 0"),
        ("compile=fast", "compile must be one of"),
    ):
        with pytest.raises(InvalidInput, match=problem):
            CudaTraining.parse(bad)


def test_the_model_is_prepared_in_place(monkeypatch):
    from cnnzoo.zoo.cuda_training import prepare_cuda_model
    from cnnzoo.zoo.recipe import Recipe, make_optimizer

    model = resnet20_cifar()
    keys = list(model.state_dict())
    monkeypatch.setenv("CNNZOO_CUDA_TRAINING", "bf16=0")
    settings = prepare_cuda_model(model)
    assert settings == CudaTraining(bf16=False)
    assert list(model.state_dict()) == keys  # the same module: checkpoints do not change
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, Recipe(epochs=1, batch_size=8, lr=0.1))
    assert not optimizer.defaults.get("fused")  # fused steps are for CUDA parameters
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 32, 32))).float()
    model.eval()
    assert model(x).dtype == torch.float32

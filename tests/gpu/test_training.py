"""Training on CUDA: the device-resident data is the CPU's, and a run is a function of its seed."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import Subset

from cnnzoo.zoo.catalogue import CIFAR10_PREPROCESS
from cnnzoo.zoo.datasets import get_dataset
from cnnzoo.zoo.device_data import DeviceSplit, dataset_pixels
from tests.serving.helpers import cnnzoo


@pytest.mark.gpu
def test_device_batches_on_cuda_equal_the_cpus(torch_cuda, cifar10_binary):
    train = Subset(get_dataset("cifar10", "train"), range(1000))
    pixels, labels = dataset_pixels(train, CIFAR10_PREPROCESS)
    splits = {
        name: DeviceSplit(pixels, labels, CIFAR10_PREPROCESS, "cifar-crop-flip", device)
        for name, device in (("cpu", "cpu"), ("cuda", torch_cuda.device))
    }
    batches = {d: list(s.batches(128, 11, shuffle=True)) for d, s in splits.items()}
    for (cuda_x, cuda_y), (cpu_x, cpu_y) in zip(batches["cuda"], batches["cpu"], strict=True):
        assert cuda_x.device.type == torch_cuda.device
        assert cuda_x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(cuda_x.cpu(), cpu_x) and torch.equal(cuda_y.cpu(), cpu_y)


@pytest.mark.gpu
def test_cuda_training_on_device_data_is_a_function_of_its_seed(
    torch_cuda, cifar10_binary, tmp_path
):
    cards = []
    for run in ("a", "b"):
        result = cnnzoo(
            "train", "resnet20-cifar10", "--device", torch_cuda.device, "--epochs", "1",
            "--train-subset", "4096", "--test-subset", "1000", "--seed", "5", "--batch-size", "32",
            "--out", str(tmp_path / run), "--no-progress", timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        cards.append(json.loads((tmp_path / run / "resnet20-cifar10" / "card.json").read_text()))
    first, second = cards
    assert first["weights"]["sha256"] == second["weights"]["sha256"]
    assert first["metrics"] == second["metrics"]
    hardware = first["hardware"]
    assert hardware["device"] == torch_cuda.device and hardware["data_workers"] == 0
    if not torch_cuda.rehearsal:  # the device-resident data and the CUDA settings
        assert hardware["cuda_training"]["channels_last"] is True
    assert first["metrics"]["top1"] > 0.25  # one epoch on 4,096 images learns something

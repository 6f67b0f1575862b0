"""Classifier graphs for the parity tests: what `cnnzoo export` writes for the zoo's trained
models (fp32, uint8 input, fp16), and torchvision's AlexNet, ResNet-18 and ResNet-50 (random
weights, 64x64 input) exported with torch.onnx's torch.export-based exporter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from cnnzoo import zoo
from cnnzoo.zoo.export import ExportOptions, export_model
from cnnzoo.zoo.repository import ModelRepository
from tests.interpret.graphs.helpers import dynamo_onnx


@dataclass
class Exported:
    """A classifier graph beside the PyTorch model it came from and real inputs for both."""

    name: str
    classifier: onnx.ModelProto
    model: nn.Module
    x: torch.Tensor  # preprocessed images, what PyTorch takes
    graph_input: np.ndarray  # what the graph takes (the same images; pixels for uint8)


ZOO = {
    "lenet5-mnist": {},
    "alexnet-cifar10": {},
    "resnet20-cifar10": {},
    "lenet5-mnist/uint8": {"input_dtype": "uint8"},
    "resnet20-cifar10/fp16": {"fp16": True},
}
BATCH = 32


@pytest.fixture(scope="session")
def zoo_exports(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> dict[str, Exported]:
    """The zoo's trained models through `cnnzoo export` (the classifiers only), with the first
    32 test images of their datasets."""
    out = {}
    for key, options in ZOO.items():
        name = key.split("/")[0]
        root = tmp_path_factory.mktemp(key.replace("/", "-"))
        summary = export_model(ExportOptions(model=name, repository=root, **options))
        repo = ModelRepository(root)
        classifier = onnx.load(str(Path(summary["path"]) / "model.onnx"))
        entry = zoo.get_entry(name)
        data = entry.open_dataset("test", data_dir=data_dir, transform=lambda image: image)
        images = [data[i][0] for i in range(BATCH)]
        preprocess = repo.preprocess(name)
        x = torch.stack([preprocess.torch_transform()(image) for image in images])
        pixels = np.stack([preprocess.pixels(image) for image in images])
        model = repo.torch_model(name, summary["version"])
        graph_input = pixels if options.get("input_dtype") == "uint8" else x.numpy()
        out[key] = Exported(key, classifier, model, x, graph_input)
    return out


@pytest.fixture(scope="session")
def torchvision_exports() -> dict[str, Exported]:
    """torchvision's AlexNet (64x64, the least it takes), ResNet-18 and ResNet-50 (32x32) with
    random weights."""
    import torchvision

    out = {}
    for name, side in (("alexnet", 64), ("resnet18", 32), ("resnet50", 32)):
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None).eval()
        x = torch.randn(BATCH, 3, side, side, generator=torch.Generator().manual_seed(1))
        out[name] = Exported(name, dynamo_onnx(model, x[:2]), model, x, x.numpy())
    return out

"""The catalogue: every named model the zoo offers. Add a model by registering a `ZooEntry` here.

Each entry is a preset: an architecture (`cnnzoo.zoo.architectures`), a dataset and a recipe,
with the weights the zoo ships for it, if any. `cnnzoo train NAME` reproduces its card.

Preprocessing statistics: MNIST and CIFAR-10 use the usual training-set mean/std; ImageNet uses
torchvision's. Each preprocess ends in a crop so any image size maps to the model input size.
"""

from __future__ import annotations

from pathlib import Path

from cnnzoo.zoo.architectures import (
    ALEXNET_CIFAR_RECIPE,
    CIFAR_RESNET_RECIPE,
    IMAGENET_RECIPE,
    LENET_RECIPE,
)
from cnnzoo.zoo.preprocess import Preprocess
from cnnzoo.zoo.registry import ZooEntry, register_model, shipped_weights_dir

_LABELS_DIR = Path(__file__).resolve().parent / "labels"

MNIST_LABELS = tuple(str(d) for d in range(10))
# Class order of CIFAR-10's batches.meta.txt.
CIFAR10_LABELS = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# torchvision's ImageNet-1k category names (`*_Weights.IMAGENET1K_V1.meta["categories"]`).
IMAGENET_LABELS = tuple((_LABELS_DIR / "imagenet1k.txt").read_text(encoding="utf-8").splitlines())

MNIST_PREPROCESS = Preprocess(colour="L", resize=28, crop=28, pad=2, mean=(0.1307,), std=(0.3081,))
CIFAR10_PREPROCESS = Preprocess(
    colour="RGB", resize=32, crop=32, pad=0,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
)  # fmt: skip
IMAGENET_PREPROCESS = Preprocess(
    colour="RGB", resize=256, crop=224, pad=0,
    mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
)  # fmt: skip

_CIFAR10 = {"dataset": "cifar10", "labels": CIFAR10_LABELS, "preprocess": CIFAR10_PREPROCESS}
_IMAGENET = {"dataset": "imagenet", "labels": IMAGENET_LABELS, "preprocess": IMAGENET_PREPROCESS}

PRESETS = (
    ZooEntry(
        name="lenet5-mnist",
        arch="lenet5",
        dataset="mnist",
        labels=MNIST_LABELS,
        preprocess=MNIST_PREPROCESS,
        recipe=LENET_RECIPE,
        weights_dir=shipped_weights_dir("lenet5-mnist"),
        architecture="LeNet-5 (C1 6@5x5, S2, C3 16@5x5, S4, C5 120, F6 84, 10) with ReLU and "
        "max-pooling, 61,706 parameters",
        notes="LeNet-5's layer sizes with ReLU instead of the scaled tanh and max-pooling "
        "instead of trainable sub-sampling, so the Zeiler & Fergus (2014) methods (deconvnet "
        "switches, guided backprop) apply; C3 is fully connected to S2 and the output layer is "
        "linear instead of RBF units. Input: the 28x28 digit padded by 2 to 32x32.",
    ),
    ZooEntry(
        name="alexnet-cifar10",
        arch="alexnet-cifar",
        **_CIFAR10,
        recipe=ALEXNET_CIFAR_RECIPE,
        weights_dir=shipped_weights_dir("alexnet-cifar10"),
        weights_dtype="int8",  # 7.5 M parameters: 7.2 MiB per file instead of 30 MB
    ),
    ZooEntry(
        name="resnet20-cifar10",
        arch="resnet20",
        **_CIFAR10,
        recipe=CIFAR_RESNET_RECIPE,
        weights_dir=shipped_weights_dir("resnet20-cifar10"),
        notes="He et al. 2016 section 4.2 ResNet-20 with option-A (parameter-free) shortcuts.",
    ),
    *(
        ZooEntry(
            name=f"{arch}-imagenet",
            arch=arch,
            **_IMAGENET,
            recipe=IMAGENET_RECIPE,
            weights_dir=shipped_weights_dir(f"{arch}-imagenet"),
        )
        for arch in ("alexnet", "resnet18", "resnet50")
    ),
)

for _preset in PRESETS:
    register_model(_preset)

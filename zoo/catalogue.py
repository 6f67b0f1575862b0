"""The catalogue: every model the zoo offers. Add a model by registering a `ZooEntry` here.

Preprocessing statistics: MNIST and CIFAR-10 use the usual training-set mean/std; ImageNet uses
torchvision's. Each preprocess ends in a crop so any image size maps to the model input size.
"""

from __future__ import annotations

from pathlib import Path

from cnnzoo.zoo.preprocess import Preprocess
from cnnzoo.zoo.recipe import Recipe
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

# torchvision's reference ImageNet recipe (references/classification, ResNet).
_IMAGENET_RECIPE = Recipe(
    epochs=90, batch_size=256, lr=0.1, nesterov=False, weight_decay=1e-4,
    schedule="step", augment="imagenet",
)  # fmt: skip


def _register_all() -> None:
    register_model(
        ZooEntry(
            name="lenet5-mnist",
            family="lenet",
            dataset="mnist",
            num_classes=10,
            labels=MNIST_LABELS,
            preprocess=MNIST_PREPROCESS,
            input_shape=(1, 32, 32),
            recipe=Recipe(
                epochs=20,
                batch_size=128,
                lr=0.05,
                weight_decay=5e-4,
                schedule="onecycle",
                augment="mnist-affine",
            ),  # fmt: skip
            weights_dir=shipped_weights_dir("lenet5-mnist"),
            builder="cnnzoo.zoo.lenet:lenet5",
            architecture="LeNet-5 (C1 6@5x5, S2, C3 16@5x5, S4, C5 120, F6 84, 10) with ReLU "
            "and max-pooling, 61,706 parameters",
            paper="http://yann.lecun.com/exdb/publis/pdf/lecun-98.pdf",
            notes="LeNet-5's layer sizes with ReLU instead of the scaled tanh and max-pooling "
            "instead of trainable sub-sampling, so the Zeiler & Fergus (2014) methods (deconvnet "
            "switches, guided backprop) apply; C3 is fully connected to S2 and the output layer is "
            "linear instead of RBF units. Input: the 28x28 digit padded by 2 to 32x32.",
        )
    )
    register_model(
        ZooEntry(
            name="alexnet-cifar10",
            family="alexnet",
            dataset="cifar10",
            num_classes=10,
            labels=CIFAR10_LABELS,
            preprocess=CIFAR10_PREPROCESS,
            input_shape=(3, 32, 32),
            recipe=Recipe(
                epochs=60,
                batch_size=128,
                lr=0.05,
                weight_decay=5e-4,
                schedule="onecycle",
                augment="cifar-crop-flip",
            ),  # fmt: skip
            weights_dir=shipped_weights_dir("alexnet-cifar10"),
            builder="cnnzoo.zoo.alexnet:alexnet_cifar",
            weights_dtype="int8",  # 7.5 M parameters: 7.2 MiB per file instead of 30 MB
            architecture="AlexNet-style for 32x32: 5 conv (3x3) + 3 FC, ReLU, max-pooling, "
            "dropout, batch norm after conv1-2",
            paper="https://papers.nips.cc/paper/4824",
        )
    )
    register_model(
        ZooEntry(
            name="resnet20-cifar10",
            family="resnet",
            dataset="cifar10",
            num_classes=10,
            labels=CIFAR10_LABELS,
            preprocess=CIFAR10_PREPROCESS,
            input_shape=(3, 32, 32),
            # He et al. 2016's crop + flip, SGD with momentum and batch 128, with a one-cycle
            # schedule and wd 5e-4 in place of their 164-epoch step schedule and wd 1e-4.
            recipe=Recipe(
                epochs=80,
                batch_size=128,
                lr=0.1,
                weight_decay=5e-4,
                schedule="onecycle",
                augment="cifar-crop-flip",
            ),  # fmt: skip
            weights_dir=shipped_weights_dir("resnet20-cifar10"),
            builder="cnnzoo.zoo.resnet:resnet20_cifar",
            architecture="CIFAR ResNet-20 (3 stages x 3 basic blocks, 16/32/64 filters, "
            "option-A identity shortcuts)",
            paper="https://arxiv.org/abs/1512.03385",
            notes="He et al. 2016 section 4.2 ResNet-20 with option-A (parameter-free) shortcuts.",
        )
    )
    for name, builder, architecture, paper in (
        ("alexnet-imagenet", "cnnzoo.zoo.alexnet:alexnet_imagenet", "torchvision AlexNet",
         "https://papers.nips.cc/paper/4824"),
        ("resnet18-imagenet", "cnnzoo.zoo.resnet:resnet18_imagenet", "torchvision ResNet-18",
         "https://arxiv.org/abs/1512.03385"),
        ("resnet50-imagenet", "cnnzoo.zoo.resnet:resnet50_imagenet", "torchvision ResNet-50",
         "https://arxiv.org/abs/1512.03385"),
    ):  # fmt: skip
        register_model(
            ZooEntry(
                name=name,
                family=name.split("-")[0].rstrip("0123456789"),
                dataset="imagenet",
                num_classes=1000,
                labels=IMAGENET_LABELS,
                preprocess=IMAGENET_PREPROCESS,
                input_shape=(3, 224, 224),
                recipe=_IMAGENET_RECIPE,
                weights_dir=shipped_weights_dir(name),
                builder=builder,
                architecture=architecture,
                paper=paper,
                torchvision_state_dicts=True,
            )
        )


_register_all()

"""Architectures by name, independent of any dataset.

An architecture is a network family with its builder, the input sizes it takes, where its
classifier head is (fine-tuning replaces it) and its default training recipe. A zoo entry (a
preset in `cnnzoo.zoo.catalogue`, or a run folder that `cnnzoo train ARCH --dataset ...`
wrote) binds one to data: classes, colour mode, input size and normalisation.

The table is plain data: builders are named as "module:function" and imported when a model is
built, so listing architectures never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cnnzoo.errors import InvalidInput, NotFound
from cnnzoo.zoo.recipe import Recipe

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "get_architecture",
    "list_architectures",
]


@dataclass(frozen=True)
class Architecture:
    """A network family, buildable for any class count (and, where it says so, channel count).

    Attributes:
        name: the name `cnnzoo train` takes, e.g. "resnet20".
        family: "lenet", "alexnet" or "resnet".
        builder: "module:function" building the randomly initialised network; it takes
            `num_classes` and, when `channels` offers more than one value, `in_channels`.
        description: one line for listings and model cards.
        paper: link to the paper.
        head: the module path of the final linear layer (the classifier head fine-tuning
            replaces), e.g. "fc".
        channels: the input channel counts the builder supports (greyscale data is converted to
            RGB for an architecture that only takes 3).
        fixed_input: the one input side the network takes (its flatten layer fixes it), or
            None when any side from `min_input` up works (global pooling).
        min_input: the smallest input side: below it the forward pass fails, or the last
            stage's feature map would be smaller than one pixel.
        recipe: the default training recipe (`cnnzoo train ARCH --dataset ...`).
        torchvision: a torchvision architecture: torchvision `.pth` state dicts load into it.
    """

    name: str
    family: str
    builder: str
    description: str
    paper: str
    head: str
    channels: tuple[int, ...]
    fixed_input: int | None
    min_input: int
    recipe: Recipe
    torchvision: bool = False

    def build(self, num_classes: int, in_channels: int = 3) -> nn.Module:
        """A randomly initialised network (imports torch; the builder is imported on first use,
        which keeps torch out of listings and `cnnzoo --help`)."""
        if in_channels not in self.channels:
            raise InvalidInput(
                f"{self.name} takes {' or '.join(map(str, self.channels))}-channel input, "
                f"not {in_channels}"
            )
        module_name, _, function = self.builder.partition(":")
        build = getattr(importlib.import_module(module_name), function)
        if len(self.channels) > 1:
            return build(num_classes=num_classes, in_channels=in_channels)
        return build(num_classes=num_classes)

    def parameter_count(self, num_classes: int, in_channels: int = 3) -> int:
        """Parameters of the network for `num_classes` and `in_channels` (built on torch's meta
        device: no memory, no initialisation)."""
        import torch

        with torch.device("meta"):
            model = self.build(num_classes, in_channels)
        return sum(p.numel() for p in model.parameters())

    def takes_input_size(self, side: int) -> bool:
        return (self.fixed_input is None or side == self.fixed_input) and side >= self.min_input

    def check_input_size(self, side: int) -> None:
        """Refuse an input side the network cannot take, naming what it needs."""
        if self.fixed_input is not None and side != self.fixed_input:
            raise InvalidInput(
                f"{self.name} takes {self.fixed_input}x{self.fixed_input} inputs, not {side}x{side}"
            )
        if side < self.min_input:
            raise InvalidInput(
                f"input size {side} is too small for {self.name}: it needs at least "
                f"{self.min_input} px (--input-size {self.min_input} or more)"
            )


_PAPER_LENET = "http://yann.lecun.com/exdb/publis/pdf/lecun-98.pdf"
_PAPER_ALEXNET = "https://papers.nips.cc/paper/4824"
_PAPER_RESNET = "https://arxiv.org/abs/1512.03385"

# The recipes the shipped models were trained with (`cnnzoo.zoo.catalogue` binds them to data).
LENET_RECIPE = Recipe(
    epochs=20, batch_size=128, lr=0.05, weight_decay=5e-4, schedule="onecycle",
    augment="mnist-affine",
)  # fmt: skip
ALEXNET_CIFAR_RECIPE = Recipe(
    epochs=60, batch_size=128, lr=0.05, weight_decay=5e-4, schedule="onecycle",
    augment="cifar-crop-flip",
)  # fmt: skip
# He et al. 2016's crop + flip, SGD with momentum and batch 128, with a one-cycle schedule and
# wd 5e-4 in place of their 164-epoch step schedule and wd 1e-4.
CIFAR_RESNET_RECIPE = Recipe(
    epochs=80, batch_size=128, lr=0.1, weight_decay=5e-4, schedule="onecycle",
    augment="cifar-crop-flip",
)  # fmt: skip
# torchvision's reference ImageNet recipe (references/classification, ResNet).
IMAGENET_RECIPE = Recipe(
    epochs=90, batch_size=256, lr=0.1, nesterov=False, weight_decay=1e-4,
    schedule="step", augment="imagenet",
)  # fmt: skip


def _cifar_resnet(depth: int) -> Architecture:
    return Architecture(
        name=f"resnet{depth}",
        family="resnet",
        builder=f"cnnzoo.zoo.resnet:resnet{depth}_cifar",
        description=f"CIFAR ResNet-{depth} (3 stages x {(depth - 2) // 6} basic blocks, "
        "16/32/64 filters, option-A identity shortcuts)",
        paper=_PAPER_RESNET,
        head="fc",
        channels=(1, 3),
        fixed_input=None,
        min_input=4,  # two stride-2 stages
        recipe=CIFAR_RESNET_RECIPE,
    )


def _torchvision_resnet(depth: int) -> Architecture:
    return Architecture(
        name=f"resnet{depth}",
        family="resnet",
        builder=f"cnnzoo.zoo.resnet:resnet{depth}_imagenet",
        description=f"torchvision ResNet-{depth}",
        paper=_PAPER_RESNET,
        head="fc",
        channels=(3,),
        fixed_input=None,
        min_input=32,  # overall stride 32
        recipe=IMAGENET_RECIPE,
        torchvision=True,
    )


ARCHITECTURES: dict[str, Architecture] = {
    arch.name: arch
    for arch in (
        Architecture(
            name="lenet5",
            family="lenet",
            builder="cnnzoo.zoo.lenet:lenet5",
            description="LeNet-5 (C1 6@5x5, S2, C3 16@5x5, S4, C5 120, F6 84, output) with "
            "ReLU and max-pooling",
            paper=_PAPER_LENET,
            head="classifier.output",
            channels=(1, 3),
            fixed_input=32,  # C5's 5x5 kernel sees the whole 5x5 map of a 32x32 input
            min_input=32,
            recipe=LENET_RECIPE,
        ),
        Architecture(
            name="alexnet-cifar",
            family="alexnet",
            builder="cnnzoo.zoo.alexnet:alexnet_cifar",
            description="AlexNet-style for 32x32: 5 conv (3x3) + 3 FC, ReLU, max-pooling, "
            "dropout, batch norm after conv1-2",
            paper=_PAPER_ALEXNET,
            head="classifier.6",
            channels=(1, 3),
            fixed_input=32,  # the first linear layer takes 256 x 4 x 4 features
            min_input=32,
            recipe=ALEXNET_CIFAR_RECIPE,
        ),
        *(_cifar_resnet(depth) for depth in (20, 32, 44, 56)),
        Architecture(
            name="alexnet",
            family="alexnet",
            builder="cnnzoo.zoo.alexnet:alexnet_imagenet",
            description="torchvision AlexNet",
            paper=_PAPER_ALEXNET,
            head="classifier.6",
            channels=(3,),
            fixed_input=None,
            min_input=63,  # the third max-pool needs a 3x3 map
            recipe=IMAGENET_RECIPE,
            torchvision=True,
        ),
        *(_torchvision_resnet(depth) for depth in (18, 34, 50)),
    )
}


def list_architectures() -> list[str]:
    """The architecture names, in the table's order (small networks first)."""
    return list(ARCHITECTURES)


def get_architecture(name: str) -> Architecture:
    """The architecture called `name`; an unknown name raises `NotFound` listing the known ones."""
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise NotFound(
            f"unknown architecture {name!r}; known architectures: {', '.join(ARCHITECTURES)}"
        ) from None

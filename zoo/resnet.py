"""Residual networks (He, Zhang, Ren, Sun 2016, "Deep residual learning for image recognition",
https://arxiv.org/abs/1512.03385).

`resnet20_cifar` is the paper's CIFAR-10 ResNet-20 (section 4.2): a 3x3 convolution with 16
filters, three stages of three basic blocks with 16, 32 and 64 filters (stride 2 at the start of
the second and third stage), global average pooling and a 10-way linear layer; shortcuts are
option A (identity; where the shape changes, subsample by 2 and pad the new channels with
zeros), so shortcuts add no parameters: about 0.27M in all. ResNet-32/44/56 are the same
family with 5, 7 and 9 blocks per stage. The ImageNet ResNet-18/34/50 are torchvision's
architectures.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BasicBlockA",
    "PadShortcut",
    "CifarResNet",
    "resnet20_cifar",
    "resnet32_cifar",
    "resnet44_cifar",
    "resnet56_cifar",
    "resnet18_imagenet",
    "resnet34_imagenet",
    "resnet50_imagenet",
]


class PadShortcut(nn.Module):
    """Option-A shortcut: take every second pixel and zero-pad the extra channels."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.extra_channels // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, half, self.extra_channels - half))

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra_channels}"


class BasicBlockA(nn.Module):
    """Two 3x3 conv-BN layers with an option-A identity shortcut and separate ReLU modules."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(planes - in_planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet with 6n+2 layers (n blocks per stage).

    Args:
        blocks_per_stage: n (3 gives ResNet-20, 5 ResNet-32, ...).
        num_classes: number of output logits.
        in_channels: image channels (3 for CIFAR-10, 1 for greyscale data).
    """

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.in_planes = 16
        self.layer1 = self._make_stage(16, blocks_per_stage, stride=1)
        self.layer2 = self._make_stage(32, blocks_per_stage, stride=2)
        self.layer3 = self._make_stage(64, blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def _make_stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlockA(self.in_planes, planes, block_stride))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _cifar_resnet(blocks_per_stage: int, num_classes: int, **kwargs: Any) -> CifarResNet:
    return CifarResNet(blocks_per_stage, num_classes=num_classes, **kwargs)


def resnet20_cifar(*, num_classes: int = 10, **kwargs: Any) -> CifarResNet:
    """ResNet-20 for CIFAR-10 (3x32x32), randomly initialised."""
    return _cifar_resnet(3, num_classes, **kwargs)


def resnet32_cifar(*, num_classes: int = 10, **kwargs: Any) -> CifarResNet:
    """ResNet-32 (5 blocks per stage) for CIFAR-sized images, randomly initialised."""
    return _cifar_resnet(5, num_classes, **kwargs)


def resnet44_cifar(*, num_classes: int = 10, **kwargs: Any) -> CifarResNet:
    """ResNet-44 (7 blocks per stage) for CIFAR-sized images, randomly initialised."""
    return _cifar_resnet(7, num_classes, **kwargs)


def resnet56_cifar(*, num_classes: int = 10, **kwargs: Any) -> CifarResNet:
    """ResNet-56 (9 blocks per stage) for CIFAR-sized images, randomly initialised."""
    return _cifar_resnet(9, num_classes, **kwargs)


def resnet18_imagenet(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """torchvision's ResNet-18 for 3x224x224, randomly initialised."""
    from torchvision.models import resnet18

    return resnet18(weights=None, num_classes=num_classes, **kwargs)


def resnet34_imagenet(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """torchvision's ResNet-34 for 3x224x224, randomly initialised."""
    from torchvision.models import resnet34

    return resnet34(weights=None, num_classes=num_classes, **kwargs)


def resnet50_imagenet(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """torchvision's ResNet-50 for 3x224x224, randomly initialised."""
    from torchvision.models import resnet50

    return resnet50(weights=None, num_classes=num_classes, **kwargs)

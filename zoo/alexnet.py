"""AlexNet (Krizhevsky, Sutskever, Hinton 2012, "ImageNet classification with deep
convolutional neural networks", https://papers.nips.cc/paper/4824).

Two variants: torchvision's ImageNet AlexNet (the 64-filter single-tower version) and an
AlexNet-style net sized for 32x32 CIFAR-10 images: the same five convolutions and three fully
connected layers with ReLU, max-pooling and dropout, 3x3 kernels instead of 11/5 (a 32x32 image
has no room for an 11x11 stride-4 layer), and batch normalisation after the first two
convolutions in place of local response normalisation. Its layer indices follow torchvision's
(`features.0` is the first convolution, `classifier.6` the last linear layer), so layer names
mean the same thing in both variants.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["AlexNetCifar", "alexnet_cifar", "alexnet_imagenet"]


class AlexNetCifar(nn.Module):
    """AlexNet-style classifier for 32x32 input.

    Args:
        num_classes: number of output logits.
        dropout: dropout probability before each of the first two linear layers.
        in_channels: image channels (3 for CIFAR-10, 1 for greyscale data).
    """

    def __init__(self, num_classes: int = 10, dropout: float = 0.5, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=3, padding=1),  # 0
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),  # 32 -> 16
            nn.Conv2d(64, 192, kernel_size=3, padding=1),  # 4
            nn.BatchNorm2d(192),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),  # 16 -> 8
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 8
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 10
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 12
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2),  # 8 -> 4
        )
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 4 * 4, 1024),
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(1024, 1024),
            nn.ReLU(inplace=True),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _alexnet_cifar(num_classes: int, **kwargs: Any) -> AlexNetCifar:
    return AlexNetCifar(num_classes=num_classes, **kwargs)


def alexnet_cifar(*, num_classes: int = 10, **kwargs: Any) -> AlexNetCifar:
    """AlexNet-style net for 32x32 images (CIFAR-10: 3x32x32), randomly initialised."""
    return _alexnet_cifar(num_classes, **kwargs)


def alexnet_imagenet(*, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """torchvision's AlexNet for 3x224x224, randomly initialised (load a state dict separately)."""
    from torchvision.models import alexnet

    return alexnet(weights=None, num_classes=num_classes, **kwargs)

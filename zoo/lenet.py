"""LeNet-5 (LeCun, Bottou, Bengio, Haffner 1998, "Gradient-based learning applied to document
recognition", http://yann.lecun.com/exdb/publis/pdf/lecun-98.pdf).

The layer sizes are the paper's: a 32x32 input (MNIST's 28x28 padded by 2), C1 6@5x5, S2, C3
16@5x5, S4, C5 120@5x5, F6 84, 10 outputs: 61,706 parameters. Two modern substitutions make the
Zeiler & Fergus (2014) methods apply: ReLU instead of the scaled tanh, and max-pooling instead of
the trainable sub-sampling; C3 is fully connected to S2 (the paper's sparse connection table was
an economy of its time), and the output is a linear layer instead of the RBF units.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

__all__ = ["LeNet5", "lenet5"]


class LeNet5(nn.Module):
    """LeNet-5 with named layers (`features.c1` ... `classifier.output`).

    Args:
        num_classes: number of output logits.
        in_channels: image channels (1 for MNIST).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("c1", nn.Conv2d(in_channels, 6, kernel_size=5)),  # 32 -> 28
                    ("relu1", nn.ReLU()),
                    ("s2", nn.MaxPool2d(kernel_size=2, stride=2)),  # 28 -> 14
                    ("c3", nn.Conv2d(6, 16, kernel_size=5)),  # 14 -> 10
                    ("relu3", nn.ReLU()),
                    ("s4", nn.MaxPool2d(kernel_size=2, stride=2)),  # 10 -> 5
                    ("c5", nn.Conv2d(16, 120, kernel_size=5)),  # 5 -> 1
                    ("relu5", nn.ReLU()),
                ]
            )
        )
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("f6", nn.Linear(120, 84)),
                    ("relu6", nn.ReLU()),
                    ("output", nn.Linear(84, num_classes)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


def _lenet(num_classes: int, **kwargs: Any) -> LeNet5:
    return LeNet5(num_classes=num_classes, **kwargs)


def lenet5(*, num_classes: int = 10, **kwargs: Any) -> LeNet5:
    """LeNet-5 for 1x32x32 input, randomly initialised (weights load through `zoo.build_model`)."""
    return _lenet(num_classes, **kwargs)

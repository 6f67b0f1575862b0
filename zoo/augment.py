"""Training augmentations named by recipes (`Recipe.augment`).

Each runs on the PIL image after the entry's resize, crop and padding, so the output keeps the
model's input size.
"""

from __future__ import annotations

from typing import Any

from cnnzoo.errors import InvalidInput

__all__ = ["AUGMENTATIONS", "build_augmentation"]

AUGMENTATIONS = ("none", "small-affine", "crop-flip", "mnist-affine", "cifar-crop-flip", "imagenet")


def build_augmentation(name: str, input_size: tuple[int, int]) -> Any:
    """The torchvision transform for augmentation `name` (None for "none").

    - small-affine: rotation up to 10 degrees, translation up to 10%, scale 0.9-1.1, black fill:
      glyphs (digits, letters, symbols) move and tilt a little and keep their meaning (no flip).
    - crop-flip: a random crop of the image padded by an eighth of its side (black), plus a
      horizontal flip: natural images (He et al. 2016's CIFAR augmentation at any size).
    - mnist-affine: small-affine, as LeNet-5's MNIST preset names it.
    - cifar-crop-flip: the 4-pixel padded random crop plus horizontal flip of the CIFAR presets.
    - imagenet: horizontal flip.
    """
    from torchvision import transforms

    if name == "none":
        return None
    if name in ("small-affine", "mnist-affine"):
        return transforms.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), fill=0)
    if name == "cifar-crop-flip":
        return transforms.Compose(
            [transforms.RandomCrop(input_size, padding=4), transforms.RandomHorizontalFlip()]
        )
    if name == "crop-flip":
        padding = max(1, round(input_size[0] / 8))
        return transforms.Compose(
            [transforms.RandomCrop(input_size, padding=padding), transforms.RandomHorizontalFlip()]
        )
    if name == "imagenet":
        return transforms.RandomHorizontalFlip()
    raise InvalidInput(f"unknown augmentation {name!r}; known: {', '.join(AUGMENTATIONS)}")

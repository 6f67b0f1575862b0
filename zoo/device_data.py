"""Training data that lives on the device: the whole split as uint8, augmented there.

A CIFAR-10 epoch through `DataLoader` workers decodes 50,000 PIL images, augments them on the
CPU and copies every batch to the GPU; for ResNet-20 on a modern GPU that, not the model, sets the
pace. Datasets that fit in device memory (MNIST: 60,000 x 1 x 32 x 32 bytes after LeNet-5's
padding, 59 MiB; CIFAR-10: 147 MiB) are copied to the device once, as uint8 after the entry's
geometric preprocessing (colour, resize, crop, pad), and each batch is cut, augmented and
normalised there: no loader processes, no host copies inside the training step.

Augmentations done here (others keep the loader path):
- `none`: the images as they are;
- `cifar-crop-flip`: He et al. (2016)'s 4-pixel zero-padded random crop and horizontal flip,
  with the distribution of torchvision's `RandomCrop(size, padding=4)` and
  `RandomHorizontalFlip()` that the loader path applies (offsets uniform in 0..8, flip with
  probability 1/2); given the same offsets and flip, the pixels are the same.

Determinism: an epoch's order, crop offsets and flips are drawn on the CPU from one
`torch.Generator` seeded with the epoch's seed, then copied to the device once per epoch; the
same seed gives the same batches on every device (the CPU path is what the tests check).
Normalisation is the loader path's arithmetic (`x / 255`, then `(x - mean) / std` in float32),
so an un-augmented image is bit-identical to `Preprocess.torch_transform`'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from cnnzoo.zoo.preprocess import Preprocess

__all__ = [
    "AUGMENTATIONS_ON_DEVICE",
    "CROP_PADDING",
    "DeviceData",
    "DeviceSplit",
    "EpochDraws",
    "augment_batch",
    "dataset_pixels",
]

AUGMENTATIONS_ON_DEVICE = ("none", "cifar-crop-flip")
CROP_PADDING = 4  # He et al. 2016, section 4.2
# At most this share of the device's free memory holds the splits (the rest trains the model).
_MEMORY_SHARE = 0.25


def dataset_pixels(
    dataset: Any, preprocess: Preprocess
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The split's images as uint8 `[N, C, H, W]` after `preprocess`'s geometric steps, and its
    labels `[N]` (int64), both on the CPU; None when the dataset holds no pixel array this can
    use (image folders) or the steps would resample it.

    Reads the array a named dataset's reader holds (`data`: N x H x W or N x H x W x C, and
    `targets`), through `Subset`s (`--train-subset`).
    """
    indices = None
    while isinstance(dataset, Subset):
        chosen = np.asarray(dataset.indices, dtype=np.int64)
        indices = chosen if indices is None else chosen[indices]
        dataset = dataset.dataset
    data, targets = getattr(dataset, "data", None), getattr(dataset, "targets", None)
    if data is None or targets is None or getattr(dataset, "target_transform", None) is not None:
        return None
    pixels = torch.as_tensor(np.asarray(data))
    if pixels.dtype != torch.uint8 or pixels.ndim not in (3, 4):
        return None
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    n, height, width, channels = pixels.shape
    if channels != preprocess.channels:
        return None  # a colour conversion (RGB -> L) would be needed
    if preprocess.resize and not height == width == preprocess.resize:
        return None  # Resize would resample (a resize to the same size is a no-op)
    if preprocess.crop and not height == width == preprocess.crop:
        return None
    labels = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
    if indices is not None:
        index = torch.from_numpy(indices)
        pixels, labels = pixels[index], labels[index]
    pixels = pixels.permute(0, 3, 1, 2)
    if preprocess.pad:
        pixels = torch.nn.functional.pad(pixels, (preprocess.pad,) * 4)  # black, as Pad(fill=0)
    return pixels.contiguous(), labels


@dataclass(frozen=True)
class EpochDraws:
    """An epoch's random choices: the order of the images, each image's crop offsets (rows and
    columns into the zero-padded image, 0..2*padding) and whether it is flipped."""

    order: torch.Tensor  # [N] int64
    top: torch.Tensor  # [N] int64
    left: torch.Tensor  # [N] int64
    flip: torch.Tensor  # [N] bool

    @classmethod
    def draw(cls, count: int, seed: int, *, shuffle: bool, augment: str) -> EpochDraws:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
        if augment == "cifar-crop-flip":
            span = 2 * CROP_PADDING + 1
            top = torch.randint(0, span, (count,), generator=generator)
            left = torch.randint(0, span, (count,), generator=generator)
            flip = torch.rand(count, generator=generator) < 0.5
        else:
            top = left = torch.full((count,), CROP_PADDING, dtype=torch.int64)
            flip = torch.zeros(count, dtype=torch.bool)
        return cls(order, top, left, flip)

    def to(self, device: torch.device | str) -> EpochDraws:
        return EpochDraws(*(t.to(device) for t in (self.order, self.top, self.left, self.flip)))


def augment_batch(
    padded: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """Crops of `padded` (`[B, C, H + 2p, W + 2p]` uint8) at (`top`, `left`), flipped left-right
    where `flip`: `[B, C, H, W]` uint8 in channels_last layout (one gather, on `padded`'s
    device)."""
    batch, _, padded_h, padded_w = padded.shape
    height, width = padded_h - 2 * CROP_PADDING, padded_w - 2 * CROP_PADDING
    device = padded.device
    rows = top[:, None] + torch.arange(height, device=device)  # [B, H]
    across = torch.arange(width, device=device)
    across = torch.where(flip[:, None], width - 1 - across, across)  # [B, W]
    cols = left[:, None] + across
    picked = padded[
        torch.arange(batch, device=device)[:, None, None], :, rows[:, :, None], cols[:, None, :]
    ]  # advanced indices first: [B, H, W, C]
    return picked.permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels_last


class DeviceSplit:
    """One split on a device: uint8 pixels (zero-padded for cropping), labels, normalisation.

    Args:
        pixels: `[N, C, H, W]` uint8 (see `dataset_pixels`).
        labels: `[N]` int64.
        preprocess: the entry's preprocessing (its mean and std).
        augment: one of `AUGMENTATIONS_ON_DEVICE`.
        device: where the split lives.
    """

    def __init__(
        self,
        pixels: torch.Tensor,
        labels: torch.Tensor,
        preprocess: Preprocess,
        augment: str,
        device: torch.device | str,
    ) -> None:
        if augment not in AUGMENTATIONS_ON_DEVICE:
            raise ValueError(f"augmentation {augment!r} is not done on the device")
        self.device = torch.device(device)
        self.augment = augment
        self.count = len(labels)
        self.padded = torch.nn.functional.pad(pixels, (CROP_PADDING,) * 4).to(self.device)
        self.labels = labels.to(self.device)
        shape = (1, preprocess.channels, 1, 1)
        self.mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(shape).to(self.device)
        self.std = torch.tensor(preprocess.std, dtype=torch.float32).view(shape).to(self.device)

    @property
    def nbytes(self) -> int:
        return self.padded.numel() + self.labels.numel() * 8

    def batches(self, batch_size: int, seed: int, *, shuffle: bool) -> _Batches:
        """The epoch's `(images, labels)` batches: float32 channels_last images, normalised,
        augmented with the draws of `seed` (in order and unaugmented when `shuffle` is False
        and the augmentation is none; the test split)."""
        draws = EpochDraws.draw(self.count, seed, shuffle=shuffle, augment=self.augment)
        return _Batches(self, draws.to(self.device), batch_size)

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 -> the model's float32 input, with the loader path's arithmetic."""
        return pixels.float().div_(255.0).sub_(self.mean).div_(self.std)


class _Batches:
    """An epoch of a `DeviceSplit`: iterable (as a `DataLoader` is) and sized (for tqdm)."""

    def __init__(self, split: DeviceSplit, draws: EpochDraws, batch_size: int) -> None:
        self.split, self.draws, self.batch_size = split, draws, batch_size

    def __len__(self) -> int:
        return -(-self.split.count // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        split, draws = self.split, self.draws
        for start in range(0, split.count, self.batch_size):
            index = draws.order[start : start + self.batch_size]
            pixels = augment_batch(
                split.padded[index], draws.top[index], draws.left[index], draws.flip[index]
            )
            yield split.normalise(pixels), split.labels[index]


@dataclass
class DeviceData:
    """A run's training and test splits on the device (see the module docstring)."""

    train: DeviceSplit
    test: DeviceSplit

    @classmethod
    def for_run(
        cls,
        train_set: Any,
        test_set: Any,
        preprocess: Preprocess,
        augment: str,
        device: str,
    ) -> DeviceData | None:
        """Both splits on `device`, or None where the loader path must serve: not CUDA, an
        augmentation done on PIL images, data without a pixel array (image folders), more
        than a quarter of the device's free memory, or `device_data=0` in
        `CNNZOO_CUDA_TRAINING` (`cnnzoo.zoo.cuda_training`)."""
        from cnnzoo.zoo.cuda_training import CudaTraining

        if not device.startswith("cuda") or augment not in AUGMENTATIONS_ON_DEVICE:
            return None
        if not CudaTraining.from_environment().device_data:
            return None
        return cls.load(train_set, test_set, preprocess, augment, device)

    @classmethod
    def load(
        cls, train_set: Any, test_set: Any, preprocess: Preprocess, augment: str, device: str
    ) -> DeviceData | None:
        """Like `for_run` on any device (the CPU too, where the tests run it)."""
        splits = [dataset_pixels(s, preprocess) for s in (train_set, test_set)]
        if any(s is None for s in splits):
            return None
        (train_pixels, train_labels), (test_pixels, test_labels) = splits  # type: ignore[misc]
        needed = sum(_padded_bytes(p) for p in (train_pixels, test_pixels))
        if torch.device(device).type == "cuda":
            free, _ = torch.cuda.mem_get_info(torch.device(device))
            if needed > _MEMORY_SHARE * free:
                return None
        return cls(
            DeviceSplit(train_pixels, train_labels, preprocess, augment, device),
            DeviceSplit(test_pixels, test_labels, preprocess, "none", device),
        )

    def epoch(self, batch_size: int, seed: int) -> _Batches:
        """One training epoch: shuffled and augmented with the draws of `seed`."""
        return self.train.batches(batch_size, seed, shuffle=True)

    def test_batches(self, batch_size: int = 256) -> _Batches:
        """The test split in order, unaugmented (what `evaluate` iterates)."""
        return self.test.batches(batch_size, 0, shuffle=False)


def _padded_bytes(pixels: torch.Tensor) -> int:
    n, c, h, w = pixels.shape
    return n * c * (h + 2 * CROP_PADDING) * (w + 2 * CROP_PADDING)

"""One epoch of training: batches in, a step function per batch, running figures out.

The seam of torchvision's reference script (`references/classification/train.py`): the trainer
(`cnnzoo.zoo.train`) decides what an epoch's batches are and what one optimizer step does, and
`train_one_epoch` only iterates. Batches are any iterable of (images, labels) tensor pairs: a
`DataLoader` over a dataset (`loader_batches`, decoding and augmenting on the CPU), or a source
that already holds its tensors on the training device, whose `.to(device)` is then free.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler
from tqdm import tqdm

__all__ = [
    "Batch",
    "EpochStats",
    "TrainStep",
    "loader_batches",
    "steps_per_epoch",
    "train_one_epoch",
]

Batch = tuple[torch.Tensor, torch.Tensor]
# A training step: (images, labels) on the device in, (loss, logits) of the batch out, detached.
StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class EpochStats:
    """What an epoch of training measured on its own batches (augmented, weights moving)."""

    loss: float
    top1: float
    seen: int


@dataclass
class TrainStep:
    """One optimizer step: forward, cross-entropy, backward, optimizer and schedule.

    `train_mode` puts the model in training mode before an epoch: `nn.Module.train` for a
    whole network, `cnnzoo.zoo.finetune.head_train_mode` for a frozen backbone.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    label_smoothing: float = 0.0
    train_mode: Callable[[nn.Module], Any] = nn.Module.train

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[Any, Any]:
        logits = self.model(images)
        loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), logits.detach()

    @property
    def lr(self) -> float:
        """The first parameter group's learning rate now."""
        return float(self.optimizer.param_groups[0]["lr"])


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Optimizer steps in an epoch of `images` (a last batch of one image is left out)."""
    return images // batch_size + (images % batch_size > 1)


class _NoLoneLastBatch(BatchSampler):
    """Batches of a sampler, leaving out a last batch of a single image: batch norm cannot
    train on one image whose feature map has shrunk to 1x1 (it raises), and one image is
    noise anyway. Its image comes back in another epoch's order."""

    def __iter__(self) -> Iterator[list[int]]:
        for batch in super().__iter__():
            if len(batch) > 1 or self.batch_size == 1:
                yield batch

    def __len__(self) -> int:
        count = len(self.sampler)  # type: ignore[arg-type]
        return count if self.batch_size == 1 else steps_per_epoch(count, self.batch_size)


def loader_batches(
    dataset: Any, *, batch_size: int, generator: torch.Generator, workers: int, pin: bool
) -> DataLoader:
    """A shuffled epoch of `dataset` in batches, its order drawn from `generator` (what
    `DataLoader(shuffle=True)` draws), without a last batch of one image.

    Worker w seeds its augmentation from the generator too: the same generator state and
    `workers` give the same batches, crops included.
    """
    sampler = RandomSampler(dataset, generator=generator)
    return DataLoader(
        dataset,
        batch_sampler=_NoLoneLastBatch(sampler, batch_size, drop_last=False),
        generator=generator,
        num_workers=workers,
        pin_memory=pin,
    )


def train_one_epoch(
    step: StepFn,
    batches: Iterable[Batch],
    *,
    device: str = "cpu",
    description: str = "train",
    progress: bool = True,
) -> EpochStats:
    """Run `step` over every batch of `batches`; the loss and top-1 over the epoch.

    Args:
        step: one optimizer step (`TrainStep`, or any callable with its contract).
        batches: (images, labels) pairs; moved to `device` (free when already there).
        device: the training device.
        description: the progress bar's label.
        progress: draw a progress bar (on a terminal only).
    """
    non_blocking = device == "cuda"  # from pinned memory: the copy overlaps the last step
    # Running sums stay on the device: reading them every step would stall a GPU.
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    bar = tqdm(
        batches,
        desc=description,
        disable=None if progress else True,  # None: only on a terminal
        leave=False,
    )
    for index, (images, targets) in enumerate(bar):
        images = images.to(device, non_blocking=non_blocking)
        targets = targets.to(device, non_blocking=non_blocking)
        loss, logits = step(images, targets)
        loss_sum += loss.double() * targets.numel()
        correct += (logits.argmax(1) == targets).sum()
        seen += targets.numel()
        if progress and index % 20 == 0:
            bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}")
    seen = max(seen, 1)
    return EpochStats(loss=float(loss_sum) / seen, top1=int(correct) / seen, seen=seen)

"""Training recipes: the defaults of an entry, and the optimizer and schedule they describe.

A `Recipe` is plain data (listing the zoo never imports torch); `make_optimizer` and
`make_scheduler` turn it into torch objects for `cnnzoo.zoo.train`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cnnzoo.errors import InvalidInput
from cnnzoo.zoo.augment import AUGMENTATIONS

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["OPTIMIZERS", "SCHEDULES", "Recipe", "lr_factor", "make_optimizer", "make_scheduler"]

SCHEDULES = ("onecycle", "cosine", "step")
OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class Recipe:
    """Training defaults of an entry; every field can be overridden on the `cnnzoo train` line.

    `schedule` is "onecycle", "cosine" or "step" (x0.1 at 50% and 75% of the epochs), each a
    curve over the run's steps, so it scales with the epochs; `augment` names a training
    augmentation in `cnnzoo.zoo.augment`; `backbone_lr_scale` multiplies the learning rate of
    every layer but the classifier head (fine-tuning pretrained layers more gently than the new
    head).

    Raises:
        InvalidInput: a count below 1, a learning rate that is not positive, a backbone scale
            outside (0, 1], or an unknown optimizer, schedule or augmentation.
    """

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    augment: str = "none"
    label_smoothing: float = 0.0
    backbone_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise InvalidInput(
                    f"--{key.replace('_', '-')} must be >= 1, got {getattr(self, key)}"
                )
        if not self.lr > 0:
            raise InvalidInput(f"--lr must be > 0, got {self.lr}")
        for key, known in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("augment", AUGMENTATIONS),
        ):
            if getattr(self, key) not in known:
                raise InvalidInput(
                    f"unknown {key} {getattr(self, key)!r} in a recipe; known: {', '.join(known)}"
                )
        if not 0.0 < self.backbone_lr_scale <= 1.0:
            raise InvalidInput(
                f"--backbone-lr-scale must be in (0, 1], got {self.backbone_lr_scale}"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise InvalidInput(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain data; `backbone_lr_scale` only when it is not 1 (the recipes of
        cards written before it existed read back equal)."""
        fields = asdict(self)
        if self.backbone_lr_scale == 1.0:
            del fields["backbone_lr_scale"]
        return fields


def lr_factor(recipe: Recipe, step: int, total_steps: int) -> float:
    """Learning-rate multiplier at optimizer step `step` (0-based) of `total_steps`.

    onecycle: torch's OneCycleLR curve (cosine warm-up from lr/25 over the first 30%, cosine
    decay to lr/25e4); cosine: cosine decay to 0; step: x0.1 at 50% and again at 75%.
    """
    progress = min(step / max(total_steps, 1), 1.0)
    if recipe.schedule == "onecycle":
        start, end, warm = 1 / 25, 1 / 25e4, 0.3
        if progress < warm:
            return start + (1 - start) * (1 - math.cos(math.pi * progress / warm)) / 2
        return end + (1 - end) * (1 + math.cos(math.pi * (progress - warm) / (1 - warm))) / 2
    if recipe.schedule == "cosine":
        return (1 + math.cos(math.pi * progress)) / 2
    return 0.1 ** ((progress >= 0.5) + (progress >= 0.75))


def make_optimizer(
    model: nn.Module, recipe: Recipe, head: str | None = None
) -> torch.optim.Optimizer:
    """The recipe's optimizer over the parameters of `model` that require gradients.

    With a `backbone_lr_scale` below 1 and the module path of the classifier `head`, the
    parameters outside the head form a first group at the scaled rate, the head a second one;
    the schedule multiplies both. On CUDA its step is fused (one kernel for every parameter)
    unless `CNNZOO_CUDA_TRAINING` says `fused=0` (`cnnzoo.zoo.cuda_training`).
    """
    import torch

    from cnnzoo.zoo.cuda_training import CudaTraining

    trained = [p for p in model.parameters() if p.requires_grad]
    on_cuda = bool(trained) and all(p.is_cuda for p in trained)
    fused = (on_cuda and CudaTraining.from_environment().fused) or None  # None: torch's choice
    parameters: Any = trained
    if head is not None and recipe.backbone_lr_scale != 1.0:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        in_head = [n == head or n.startswith(head + ".") for n, _ in named]
        backbone = [p for (_, p), h in zip(named, in_head, strict=True) if not h]
        parameters = [
            *(
                [{"params": backbone, "lr": recipe.lr * recipe.backbone_lr_scale}]
                if backbone
                else []
            ),
            {"params": [p for (_, p), h in zip(named, in_head, strict=True) if h]},
        ]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(
            parameters, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=fused
        )
    return torch.optim.SGD(
        parameters,
        lr=recipe.lr,
        momentum=recipe.momentum,
        nesterov=recipe.nesterov,
        weight_decay=recipe.weight_decay,
        fused=fused,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, total_steps: int, done_steps: int = 0
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step scheduler following `lr_factor`, positioned after `done_steps` (a resume)."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(recipe, step, total_steps),
        last_epoch=done_steps - 1,
    )

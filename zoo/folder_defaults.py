"""The recipe of a run on an image folder, chosen from the data and written in the card.

A preset's recipe was tuned for its dataset (LeNet-5's for MNIST digits, ResNet-20's for
CIFAR-10 over 80 epochs); a user's folder gets defaults from what its images are, and the card's
`chosen` section says what was chosen and why. Every choice yields to its flag.

- augmentation: grey-scale images are taken for glyphs (digits, letters, symbols): small
  affine moves, no flips (`small-affine`); colour images for natural ones: a crop of the image
  padded by an eighth of its side, and horizontal flips (`crop-flip`);
- learning rate: a range test on the data (`--lr auto`, `cnnzoo.zoo.lr_range`);
- epochs: 10 when fine-tuning pretrained weights, else the architecture's recipe's, at most 30;
- schedule: one-cycle (warm-up, then annealing), a curve over the run's steps whatever the
  number of epochs;
- batch size: the architecture's (at most 128, 64 for the ImageNet-sized networks), halved
  while an epoch would have fewer than 16 steps (down to 8);
- fine-tuning all layers of pretrained weights: the layers below the new head at a tenth of its
  rate (`--backbone-lr-scale`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from cnnzoo.zoo.architectures import Architecture

__all__ = ["FolderDefaults", "folder_defaults"]

_SCRATCH_EPOCHS = 30
_FINETUNE_EPOCHS = 10
_MIN_STEPS_PER_EPOCH = 16
_MIN_BATCH = 8
_BACKBONE_LR_SCALE = 0.1


@dataclass(frozen=True)
class FolderDefaults:
    """The recipe chosen for a folder (its `lr` is a placeholder when `lr_auto`), and why."""

    recipe: Any
    lr_auto: bool
    chosen: dict[str, Any]


def folder_defaults(
    arch: Architecture,
    *,
    colour: str,
    n_train: int,
    pretrained: bool,
    freeze: bool = False,
    augment: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | str | None = None,
    backbone_lr_scale: float | None = None,
) -> FolderDefaults:
    """The recipe for `arch` on a folder of `n_train` training images in `colour` (see the
    module docstring); the arguments after `pretrained` are the flags given (None: choose)."""
    chosen: dict[str, Any] = {}
    base = arch.recipe
    if augment is None:
        augment = "small-affine" if colour == "L" else "crop-flip"
        chosen["augment"] = {
            "value": augment,
            "why": "grey-scale images, taken for glyphs: small shifts, turns and scaling, no flips"
            if colour == "L"
            else "colour images, taken for natural ones: padded random crops and flips",
        }
    if epochs is None:
        epochs = _FINETUNE_EPOCHS if pretrained else min(base.epochs, _SCRATCH_EPOCHS)
        chosen["epochs"] = {
            "value": epochs,
            "why": "fine-tuning pretrained weights" if pretrained else
            f"the {arch.name} recipe's {base.epochs}, at most {_SCRATCH_EPOCHS}",
        }  # fmt: skip
    if batch_size is None:
        batch_size = min(base.batch_size, 64 if arch.torchvision else 128)
        while batch_size > _MIN_BATCH and n_train / batch_size < _MIN_STEPS_PER_EPOCH:
            batch_size //= 2
        chosen["batch_size"] = {
            "value": batch_size,
            "why": f"at least {_MIN_STEPS_PER_EPOCH} steps an epoch over {n_train} images",
        }
    scale = backbone_lr_scale
    if scale is None:
        scale = _BACKBONE_LR_SCALE if pretrained and not freeze else 1.0
        if scale != 1.0:
            chosen["backbone_lr_scale"] = {
                "value": scale,
                "why": "pretrained layers fine-tune at a tenth of the new head's rate",
            }
    recipe = replace(
        base,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr if isinstance(lr, float) else base.lr,
        schedule="onecycle",
        augment=augment,
        backbone_lr_scale=scale,
    )
    if base.schedule != "onecycle":
        chosen["schedule"] = {
            "value": "onecycle",
            "why": f"warm-up and annealing at any length (the {base.schedule} schedule of the "
            f"{arch.name} recipe assumes its {base.epochs} epochs)",
        }
    return FolderDefaults(recipe, lr is None or lr == "auto", chosen)

"""Project single units back to pixels (Zeiler & Fergus 2014, Fig. 2), many per backward pass.

A unit is (image, channel, y, x) of one layer's output (or (image, index) for a flat layer).
Units of different images or of the same image cannot share one backward pass as a sum of seeds
(their maps would add up), so each unit gets its own copy of its image in the batch: one forward
and one backward pass then project `batch_size` units at once. The forward stops at the layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnzoo.errors import InvalidInput
from cnnzoo.interpret.forward import forward_to
from cnnzoo.interpret.rules import Rule, relu_rule

__all__ = ["Unit", "project_units"]


@dataclass(frozen=True, order=True)
class Unit:
    """One unit of a layer's output for one image.

    Attributes:
        image: row of the image in the `images` batch given to `project_units`.
        channel: the channel (or the feature index of a flat layer).
        y, x: the position in the feature map (0 for a flat layer).
    """

    image: int
    channel: int
    y: int = 0
    x: int = 0


def project_units(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    units: Sequence[Unit],
    rule: Rule = Rule.DECONVNET,
    batch_size: int = 64,
) -> torch.Tensor:
    """The rule-modified gradient of each unit with respect to its image.

    Args:
        model: the network (nn.ReLU modules only; see `cnnzoo.interpret.rules`).
        layer: the module whose output holds the units; it must run once per forward pass.
        images: preprocessed images `[N, C, H, W]`.
        units: the units to project; `Unit.image` indexes `images`.
        rule: deconvnet (the paper's projection), guided backprop or the plain gradient.
        batch_size: units per forward/backward pass.

    Returns:
        `[len(units), C, H, W]`, one map per unit, in the order given.

    Raises:
        InvalidInput: a unit outside the images or the layer's output (the message names the
            bound), a layer whose output is neither `[N, C, H, W]` nor `[N, F]`.
        UnsupportedModel: a layer that runs more than once, an activation other than ReLU.
    """
    if images.dim() < 2:
        raise InvalidInput(f"images must be a batch [N, C, H, W], got {list(images.shape)}")
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be at least 1, got {batch_size}")
    count = images.shape[0]
    for unit in units:
        if not 0 <= unit.image < count:
            raise InvalidInput(
                f"{unit}: image {unit.image} out of range; {count} images given (0 to {count - 1})"
            )
        if min(unit.channel, unit.y, unit.x) < 0:
            raise InvalidInput(f"{unit}: channel and position must not be negative")
    maps = torch.empty((len(units), *images.shape[1:]), dtype=images.dtype, device=images.device)
    with torch.inference_mode(False), torch.enable_grad(), relu_rule(model, rule):
        for start in range(0, len(units), batch_size):
            chunk = units[start : start + batch_size]
            rows = torch.tensor([u.image for u in chunk], device=images.device)
            x = images.detach()[rows].clone().requires_grad_(True)
            out = forward_to(model, [layer], x)[layer]
            _check_units(chunk, layer, tuple(out.shape[1:]))
            seed = torch.zeros_like(out)
            batch = torch.arange(len(chunk), device=out.device)
            channels = torch.tensor([u.channel for u in chunk], device=out.device)
            if out.dim() == 4:
                ys = torch.tensor([u.y for u in chunk], device=out.device)
                xs = torch.tensor([u.x for u in chunk], device=out.device)
                seed[batch, channels, ys, xs] = 1
            else:
                seed[batch, channels] = 1
            (grad,) = torch.autograd.grad(out, x, seed)
            maps[start : start + len(chunk)] = grad.detach()
    return maps


def _check_units(units: Sequence[Unit], layer: str, shape: tuple[int, ...]) -> None:
    """Refuse units outside `layer`'s output (`[C, H, W]` or `[F]`), naming the bound."""
    if len(shape) not in (1, 3):
        raise InvalidInput(
            f"layer {layer!r} outputs [N, {', '.join(map(str, shape))}]; units need "
            "[N, C, H, W] or [N, F]"
        )
    channels = shape[0]
    height, width = shape[1:] if len(shape) == 3 else (1, 1)
    for unit in units:
        if unit.channel >= channels:
            raise InvalidInput(
                f"{unit}: channel {unit.channel} out of range; layer {layer!r} has {channels} "
                f"channels (0 to {channels - 1})"
            )
        if unit.y >= height or unit.x >= width:
            raise InvalidInput(
                f"{unit}: position ({unit.y}, {unit.x}) is outside layer {layer!r}'s "
                f"{height}x{width} output (y 0 to {height - 1}, x 0 to {width - 1})"
            )

"""`--lr auto`: a learning-rate range test picks the peak rate of the one-cycle schedule.

Smith, "Cyclical Learning Rates for Training Neural Networks" (2017,
https://arxiv.org/abs/1506.01186), section 3.3, run as fastai's `lr_find` runs it: train for
up to `steps` mini-batches while the rate grows geometrically from `start` to `end`, and follow
the loss smoothed by a (debiased) exponential moving average over about ten batches.

The test looks for where training breaks down: the smoothed loss, after falling by more than
1 % (more than the noise), rising back above the loss of the untrained network (its first ten
batches), or past four times the lowest seen, which also ends the test. When it does, the pick
is half a decade (a factor of 10^0.5) below the rate with the lowest smoothed loss: still on
the falling side of the curve, near the bound Smith's one-cycle schedule ("A disciplined
approach to neural network hyper-parameters", 2018, https://arxiv.org/abs/1803.09820) peaks
at. LeNet-5's MNIST recipe (0.05) lies in the band this gives on MNIST. When the loss never
breaks down in the range (batch-normalised networks from scratch often keep falling, slowly, up
to the largest rates), the curve bounds nothing and the recipe's rate is kept; the card says
which happened.

The model's weights, batch-norm statistics and mode are restored afterwards; the optimizer
used is thrown away. The batches and dropout come from the seed the caller set, so the same seed
picks the same rate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.zoo.recipe import Recipe, make_optimizer

__all__ = ["RangeTest", "lr_range_test"]

_SMOOTHING = 0.9  # about ten batches: the rate grows a sixth of a decade meanwhile
_DIVERGED = 4.0  # stop when the smoothed loss exceeds this multiple of the best
_MIN_STEPS = 10  # never before this many steps; the untrained loss is the one at this step
_DESCENT = 0.01  # the loss must first fall by this fraction of the untrained loss
_BELOW_MINIMUM = 10**0.5  # the pick: half a decade below the rate of the lowest loss


@dataclass(frozen=True)
class RangeTest:
    """What a range test measured and picked.

    Attributes:
        lr: the picked peak learning rate (half a decade below `min_loss_lr` when the loss
            broke down, else the fallback).
        min_loss_lr: the rate at the lowest smoothed loss.
        min_loss: that loss.
        broke_down: whether the loss rose back above the untrained loss (or past four times
            its lowest) at a higher rate.
        start, end: the range tried.
        steps: mini-batches run (fewer than asked when the loss diverged first).
        curve: (rate, smoothed loss) every few steps, for plotting.
    """

    lr: float
    min_loss_lr: float
    min_loss: float
    broke_down: bool
    start: float
    end: float
    steps: int
    curve: tuple[tuple[float, float], ...]

    def record(self) -> dict[str, Any]:
        """The card's account of the test."""
        return {
            "lr": _round(self.lr),
            "min_loss_lr": _round(self.min_loss_lr),
            "min_loss": round(self.min_loss, 4),
            "range": [self.start, self.end],
            "steps": self.steps,
            "broke_down": self.broke_down,
            "rule": "half a decade below the rate with the lowest smoothed loss"
            if self.broke_down
            else "the loss never broke down in the range: the recipe's rate is kept",
        }


def lr_range_test(
    model: nn.Module,
    recipe: Recipe,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    head: str | None = None,
    device: str = "cpu",
    train_mode: Callable[[nn.Module], Any] = nn.Module.train,
    start: float = 1e-5,
    end: float = 10.0,
    steps: int = 100,
    fallback: float | None = None,
) -> RangeTest:
    """Run the range test on `model` with `recipe`'s optimizer (see the module docstring).

    Args:
        model: the network, on `device`; left as it was found.
        recipe: the optimizer, weight decay, label smoothing and backbone scale to test.
        batches: training batches; re-iterated when shorter than `steps`.
        head: the classifier head's module path (for `backbone_lr_scale`).
        device: where the model is.
        train_mode: puts the model in training mode (`head_train_mode` for a frozen backbone).
        start, end: the range of learning rates (of the head's parameter group).
        steps: mini-batches at most.
        fallback: the pick when the loss never breaks down (default: `recipe.lr`).
    """
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    optimizer = make_optimizer(model, replace(recipe, lr=start), head)
    base = [group["lr"] / start for group in optimizer.param_groups]  # each group's scale
    growth = (end / start) ** (1 / max(steps - 1, 1))
    average, best, best_lr = 0.0, math.inf, start
    smoothed_losses: list[float] = []
    curve: list[tuple[float, float]] = []
    done, broke_down = 0, False
    try:
        train_mode(model)
        for index, (images, targets) in zip(range(steps), _repeat(batches), strict=False):
            rate = start * growth**index
            for group, scale in zip(optimizer.param_groups, base, strict=True):
                group["lr"] = rate * scale
            images, targets = images.to(device), targets.to(device)
            loss = F.cross_entropy(model(images), targets, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done = index + 1
            value = float(loss.detach())
            if not math.isfinite(value):
                broke_down = True
                break
            average = _SMOOTHING * average + (1 - _SMOOTHING) * value
            smoothed = average / (1 - _SMOOTHING**done)
            if index % 5 == 0:
                curve.append((_round(rate), round(smoothed, 4)))
            smoothed_losses.append(smoothed)
            if smoothed < best:
                best, best_lr = smoothed, rate
            elif done >= _MIN_STEPS and smoothed > _DIVERGED * best:
                broke_down = True
                break
    finally:
        model.load_state_dict(saved)
        model.train(was_training)
        optimizer.zero_grad(set_to_none=True)
    if len(smoothed_losses) >= _MIN_STEPS:  # risen above the untrained loss after the lowest?
        untrained = smoothed_losses[_MIN_STEPS - 1]
        lowest = smoothed_losses.index(min(smoothed_losses))
        fell = smoothed_losses[lowest] < (1 - _DESCENT) * untrained  # more than noise
        rose = any(v > untrained for v in smoothed_losses[lowest:])
        broke_down = broke_down or (fell and rose)
    picked = best_lr / _BELOW_MINIMUM if broke_down else (fallback or recipe.lr)
    return RangeTest(_round(picked), best_lr, best, broke_down, start, end, done, tuple(curve))


def _repeat(batches: Iterable[Any]) -> Iterator[Any]:
    """The batches again and again (a DataLoader re-iterates; nothing is kept in memory)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            return


def _round(value: float) -> float:
    """Four significant digits: what a card needs of a learning rate."""
    return float(f"{value:.4g}")

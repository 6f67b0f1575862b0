"""Average Drop and Increase in Confidence (Chattopadhay et al. 2018, Grad-CAM++,
https://arxiv.org/abs/1710.11063), made for class activation maps.

The map, clipped to its positive part and divided by its largest value, becomes a soft mask
E in [0, 1]; the model sees the image blended toward the constant filling where E is small,
x' = E * x (model inputs are 0 at the preprocessing's mean). With Y the explained class's
probability on the image and O on x':

    Average Drop  = mean over images of max(0, Y - O) / Y, in %   (lower is better)
    Increase      = share of images with O > Y, in %               (higher is better)

A map that keeps the evidence for the class keeps the probability up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnnzoo.interpret.quality.curves import predict
from cnnzoo.interpret.quality.settings import Model, softmax

__all__ = ["ConfidenceChange", "confidence_change", "soft_mask"]


@dataclass(frozen=True)
class ConfidenceChange:
    """Per image: the relative drop max(0, Y - O) / Y (0 to 1) and whether O > Y."""

    drop: np.ndarray
    increase: np.ndarray


def soft_mask(maps: np.ndarray) -> np.ndarray:
    """`[N, H, W]` maps as masks in [0, 1]: the positive part over its largest value (a map
    without positive values masks everything)."""
    positive = np.clip(np.asarray(maps, dtype=np.float64), 0.0, None)
    peak = positive.reshape(len(positive), -1).max(axis=1)
    return positive / np.where(peak > 0, peak, 1.0)[:, None, None]


def confidence_change(
    model: Model,
    images: np.ndarray,
    targets: np.ndarray,
    maps: np.ndarray,
    original: np.ndarray,
    batch_size: int,
) -> ConfidenceChange:
    """Average Drop's and Increase in Confidence's per-image terms.

    Args:
        model: images -> logits.
        images: `[N, C, H, W]` model inputs.
        targets: `[N]` the explained classes.
        maps: `[N, H, W]`.
        original: `[N]` Y, the explained class's probability on each image.
        batch_size: model inputs per call.
    """
    rows = np.arange(len(targets))
    masked = np.empty(len(targets))
    for start in range(0, len(targets), batch_size):
        part = slice(start, start + batch_size)
        x = np.asarray(images[part], dtype=np.float64) * soft_mask(maps[part])[:, None]
        masked[part] = softmax(predict(model, x, batch_size))[rows[part] - start, targets[part]]
    y = np.asarray(original, dtype=np.float64)
    drop = np.clip(y - masked, 0.0, None) / np.where(y > 0, y, 1.0)
    return ConfidenceChange(drop=drop, increase=masked > y)

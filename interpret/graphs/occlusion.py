"""The sliding square of occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7) as constant masks,
placed exactly as Captum's `Occlusion` places its sliding window, so the explanation graph and
the PyTorch implementation (`cnnzoo.interpret.occlusion`) occlude the same pixels."""

from __future__ import annotations

import math

import numpy as np

from cnnzoo.errors import InvalidInput

__all__ = ["check_window", "default_window", "occlusion_masks"]


def default_window(size: int) -> tuple[int, int]:
    """(window, stride) for a side of `size` pixels: a quarter of the side, moved by a quarter
    half the window, adjusted so the square's positions cover the image edge to edge."""
    window = max(2, size // 4)
    stride = max(1, window // 2)
    while (size - window) % stride:
        stride -= 1
    return window, stride


def check_window(size: tuple[int, int], window: int, stride: int) -> None:
    """Refuse a square larger than the image or a stride below 1 (or, as Captum does, above
    the window where the square does not cover the image)."""
    if not 1 <= window <= min(size):
        raise InvalidInput(f"occlusion window must be between 1 and {min(size)}, got {window}")
    if stride < 1:
        raise InvalidInput(f"occlusion stride must be at least 1, got {stride}")
    if stride > window and any(side > window for side in size):
        raise InvalidInput(
            f"occlusion stride {stride} is larger than the window {window}: some pixels would "
            "never be covered"
        )


def occlusion_masks(height: int, width: int, window: int, stride: int) -> np.ndarray:
    """`[P, H, W]` 0/1 masks, one per position of the square, in row-major order of its
    positions. As Captum: ceil((side - window) / stride) + 1 positions per side, the last one
    cropped at the image edge where the stride does not divide evenly."""
    rows = math.ceil((height - window) / stride) + 1
    cols = math.ceil((width - window) / stride) + 1
    masks = np.zeros((rows * cols, height, width), dtype=np.float64)
    for r in range(rows):
        for c in range(cols):
            top, left = r * stride, c * stride
            masks[r * cols + c, top : top + window, left : left + window] = 1.0
    return masks

"""Attribution maps as the PNG `cnnzoo.interpret.render` draws, with numpy and Pillow only, so
the server renders explanation graphs' outputs without torch. The arithmetic is the same
float32 arithmetic in the same order, so the bytes are identical."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

__all__ = ["attribution_png", "attribution_rgb", "png_bytes", "projection_png", "projection_rgb"]

_BLUE = np.array([0.13, 0.40, 0.80], dtype=np.float32).reshape(3, 1, 1)
_RED = np.array([0.80, 0.13, 0.13], dtype=np.float32).reshape(3, 1, 1)
_ONES = np.ones((3, 1, 1), dtype=np.float32)


def attribution_rgb(a: np.ndarray) -> np.ndarray:
    """A signed map `[H, W]` in a diverging palette, `[3, H, W]` float32 in [0, 1]: white at
    zero, red positive, blue negative, full colour at the largest |value|."""
    a = np.asarray(a, dtype=np.float32)
    peak = float(np.abs(a).max()) if a.size else 0.0
    if peak == 0.0 or not math.isfinite(peak):
        return np.ones((3, *a.shape), dtype=np.float32)
    s = np.clip(a / np.float32(peak), -1, 1)[None]
    pos = np.maximum(s, np.float32(0))
    neg = np.maximum(-s, np.float32(0))
    return (1 - pos - neg) * _ONES + pos * _RED + neg * _BLUE


# PNGs sent as answers: zlib's level 1 encodes a 224x224 map about 4 times as fast as the default
# level 6, for about 5 % more bytes.
ANSWER_PNG_LEVEL = 1


def png_bytes(rgb: np.ndarray) -> bytes:
    """`[3, H, W]` in [0, 1] as PNG bytes."""
    pixels = np.round(np.clip(np.asarray(rgb, dtype=np.float32), 0, 1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)))
    image.save(buffer, format="PNG", compress_level=ANSWER_PNG_LEVEL)
    return buffer.getvalue()


def attribution_png(attribution: np.ndarray) -> bytes:
    """One image's map from an explanation graph (`[C, H, W]`, summed over channels as
    `cnnzoo.interpret.explain` does, or `[H, W]`) as the Explain RPC's PNG."""
    a = np.asarray(attribution, dtype=np.float32)
    if a.ndim == 3:
        a = a.sum(axis=0, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"an attribution map is [C, H, W] or [H, W], got {list(a.shape)}")
    return png_bytes(attribution_rgb(a))


def projection_rgb(p: np.ndarray) -> np.ndarray:
    """A unit's projection `[C, H, W]` as an image `[3, H, W]` in [0, 1], as
    `cnnzoo.interpret.render.projection_rgb` draws it (Zeiler & Fergus): zero is mid-grey, the
    largest |value| full contrast; one channel is grey, other counts than 3 are averaged."""
    p = np.asarray(p, dtype=np.float32)
    peak = float(np.abs(p).max()) if p.size else 0.0
    if peak == 0.0 or not math.isfinite(peak):
        return np.full((3, *p.shape[-2:]), 0.5, dtype=np.float32)
    t = np.clip(p / np.float32(2 * peak) + np.float32(0.5), 0, 1)
    if t.shape[0] != 3:
        t = t.mean(axis=0, keepdims=True, dtype=np.float32) if t.shape[0] != 1 else t
        t = np.repeat(t, 3, axis=0)
    return t


def projection_png(p: np.ndarray) -> bytes:
    """`projection_rgb` of a projection `[C, H, W]` as PNG bytes (the explorer's unit view)."""
    return png_bytes(projection_rgb(p))

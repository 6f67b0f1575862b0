"""The order in which a map says pixels matter: most relevant first.

Pixels are grouped into square regions (single pixels by default), each scored by the sum of the
map over it, and ranked by score, highest first; ties keep the regions' row-major order, so the
order is the same on every run and machine. The signed map is ranked, as Quantus does by
default: a map's positive values claim evidence for the class, its negative ones against it.
"""

from __future__ import annotations

import numpy as np

from cnnzoo.errors import InvalidInput

__all__ = ["region_ranks"]


def region_ranks(maps: np.ndarray, region: int) -> tuple[np.ndarray, int]:
    """Each pixel's region's place in the order (0: removed first) and the number of regions.

    Args:
        maps: `[N, H, W]` finite values.
        region: the side of the square regions in pixels; regions at the right and bottom edges
            are cut off by the image.

    Returns:
        ranks `[N, H, W]` int32 and the number of regions per image.
    """
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim != 3:
        raise InvalidInput(f"maps must be [N, H, W], got shape {list(m.shape)}")
    if not np.isfinite(m).all():
        raise InvalidInput("maps must be finite (a map holds NaN or infinity)")
    n, height, width = m.shape
    rows, cols = -(-height // region), -(-width // region)
    padded = np.zeros((n, rows * region, cols * region))
    padded[:, :height, :width] = m
    scores = padded.reshape(n, rows, region, cols, region).sum(axis=(2, 4)).reshape(n, -1)
    order = np.argsort(-scores, axis=1, kind="stable")
    place = np.empty_like(order)
    np.put_along_axis(place, order, np.arange(rows * cols)[None, :], axis=1)
    place = place.reshape(n, rows, cols).astype(np.int32)
    ranks = np.repeat(np.repeat(place, region, axis=1), region, axis=2)[:, :height, :width]
    return np.ascontiguousarray(ranks), rows * cols

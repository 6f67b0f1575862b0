"""How alike two maps are: Spearman rank correlation and SSIM, batched over maps.

Adebayo et al. (2018) compare a method's map of the trained model with its map of a randomised
one by the rank correlation of absolute values, the signed rank correlation and SSIM; Quantus
does the same (`correlation_spearman`, `ssim` on maps taken in absolute value and divided by
their largest value). Ties share their average rank (what `scipy.stats.spearmanr` does): maps
with large flat areas (guided backprop's zeros, Grad-CAM's) would otherwise look alike merely
because their zeros lie in the same places.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

__all__ = ["Similarity", "rank_correlation", "similarity", "ssim"]

_WINDOW = 7  # skimage's default SSIM window
_K1, _K2 = 0.01, 0.03


def _rows(maps: np.ndarray) -> np.ndarray:
    array = np.asarray(maps, dtype=np.float64)
    return array.reshape(array.shape[0], -1)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each pair of maps `a[i]`, `b[i]` (`[N, ...]` each): the Pearson
    correlation of their ranks, ties averaged. A map without variation correlates 0 with
    anything (the correlation is undefined there)."""
    ra = rankdata(_rows(a), axis=1)
    rb = rankdata(_rows(b), axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    denominator = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    numerator = (ra * rb).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), 0.0)
    return np.clip(r, -1.0, 1.0)  # rounding can pass 1 by an ulp


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean structural similarity (Wang et al. 2004) of each pair of 2-D maps `a[i]`, `b[i]`
    (`[N, H, W]` each), as `skimage.metrics.structural_similarity` computes it by default: a
    7 x 7 uniform window (smaller for maps smaller than 7 px), sample covariances, K1 = 0.01,
    K2 = 0.03, averaged over the positions where the window lies inside the map, with the data
    range of the pair (largest minus smallest value of both). Two equal constant maps have
    SSIM 1."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 3 or x.shape != y.shape:
        raise ValueError(f"ssim compares [N, H, W] maps of one shape, got {x.shape}, {y.shape}")
    window = min(_WINDOW, *x.shape[1:])
    window -= 1 - window % 2  # odd, as skimage requires
    span = (np.maximum(x.max(axis=(1, 2)), y.max(axis=(1, 2)))) - np.minimum(
        x.min(axis=(1, 2)), y.min(axis=(1, 2))
    )
    c1 = ((_K1 * span) ** 2)[:, None, None]
    c2 = ((_K2 * span) ** 2)[:, None, None]

    def mean(t: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(t, size=(1, window, window))

    ux, uy = mean(x), mean(y)
    norm = window**2 / (window**2 - 1) if window > 1 else 1.0
    vx = norm * (mean(x * x) - ux * ux)
    vy = norm * (mean(y * y) - uy * uy)
    vxy = norm * (mean(x * y) - ux * uy)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (window - 1) // 2
    inner = s[:, pad : s.shape[1] - pad, pad : s.shape[2] - pad]
    result = inner.reshape(inner.shape[0], -1).mean(axis=1)
    same = (span == 0) & np.all(x == y, axis=(1, 2))
    return np.where(same, 1.0, np.nan_to_num(result, nan=0.0))


def _scaled_magnitude(maps: np.ndarray) -> np.ndarray:
    """|map| / max |map| per map (all-zero maps stay zero)."""
    m = np.abs(np.asarray(maps, dtype=np.float64))
    peak = m.reshape(m.shape[0], -1).max(axis=1)
    return m / np.where(peak > 0, peak, 1.0)[:, None, None]


@dataclass(frozen=True)
class Similarity:
    """Per map pair: rank correlation of absolute values, signed rank correlation, and SSIM of
    the maps in absolute value divided by their largest value (Quantus' MPRT defaults)."""

    rank_abs: np.ndarray
    rank_signed: np.ndarray
    ssim: np.ndarray


def similarity(a: np.ndarray, b: np.ndarray) -> Similarity:
    """Every similarity of each pair of `[N, H, W]` maps."""
    return Similarity(
        rank_abs=rank_correlation(np.abs(a), np.abs(b)),
        rank_signed=rank_correlation(a, b),
        ssim=ssim(_scaled_magnitude(a), _scaled_magnitude(b)),
    )

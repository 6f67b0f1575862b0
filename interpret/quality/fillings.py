"""What replaces the pixels a deletion or insertion curve removes.

"mean": the constant model input 0, i.e. the preprocessing's mean colour (the training set's
mean for the zoo's models): the "grey square" of Zeiler & Fergus and of most deletion metrics.
Its sharp edges tell the model where pixels were removed, so the curve partly measures the
shape of the removed set instead of the information in it.

"road": ROAD's noisy linear imputation (Rong et al. 2022, "A consistent and efficient evaluation
strategy for attribution methods", https://arxiv.org/abs/2202.00449): each removed pixel becomes
the weighted mean of its 8 neighbours (1/6 for the 4 direct ones, 1/12 for the diagonals; known
neighbours fixed, removed ones unknowns of the same linear system), plus Gaussian noise. This is
the system of ROAD's reference code and of Quantus' `noisy_linear_imputation`; here the systems
of many images are solved at once, as one block-diagonal sparse system per chunk.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import solveh_banded
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve
from threadpoolctl import ThreadpoolController

__all__ = ["MAX_UNKNOWNS", "linear_imputation"]

# ROAD's neighbours: (dy, dx) and weight
_NEIGHBOURS = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)
MAX_UNKNOWNS = 1 << 16  # removed pixels per sparse solve: bounds the factorisation's memory
_BANDED = 64  # images at most this wide solve as banded Cholesky systems, wider ones by SuperLU
# OpenBLAS's threads make the banded solve of these thin systems tens of times slower (and spin
# beside the model's own threads afterwards): the solves run on one BLAS thread.
_BLAS = ThreadpoolController()


def linear_imputation(images: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's linear imputation (without its noise) of the removed pixels of each image.

    Args:
        images: `[B, C, H, W]`.
        removed: `[B, H, W]` bool; an image with every pixel removed has no known neighbour to
            interpolate from and keeps its values (callers fill it with a constant instead).

    Returns:
        `[B, C, H, W]` float64: the known pixels as they were, the removed ones solving the
        system.
    """
    x = np.array(images, dtype=np.float64)
    b, c, height, width = x.shape
    mask = np.asarray(removed, dtype=bool).reshape(b, -1)
    mask &= ~mask.all(axis=1, keepdims=True)
    counts = mask.sum(axis=1)
    flat = x.reshape(b, c, -1)
    start = 0
    while start < b:  # groups of whole images of at most MAX_UNKNOWNS removed pixels
        stop, total = start, 0
        while stop < b and (stop == start or total + counts[stop] <= MAX_UNKNOWNS):
            total += counts[stop]
            stop += 1
        if total:
            _solve(flat[start:stop], mask[start:stop], height, width)
        start = stop
    return x


def _span(offset: int, size: int) -> tuple[slice, slice]:
    """(the pixels whose neighbour at `offset` lies inside, those neighbours) along one axis."""
    if offset >= 0:
        return slice(0, size - offset), slice(offset, size)
    return slice(-offset, size), slice(0, size + offset)


def _solve(flat: np.ndarray, mask: np.ndarray, height: int, width: int) -> None:
    """Fill `flat` `[G, C, H*W]` in place where `mask` `[G, H*W]` is set.

    For a removed pixel p with neighbours q (weights w) inside the image, the equation
    sum_q w (x_p - x_q) = 0 moves the known x_q to the right-hand side; the system is symmetric
    positive definite. Its parts are built on the pixel grid, one array operation per
    neighbour, then gathered at the removed pixels (numbered in row-major order)."""
    groups, channels, _ = flat.shape
    grid = flat.reshape(groups, channels, height, width)
    removed = mask.reshape(groups, height, width)
    unknowns = int(removed.sum())
    number = np.cumsum(removed.ravel()).reshape(removed.shape) - 1
    known = np.where(removed[:, None], 0.0, grid)
    rhs = np.zeros_like(grid)
    weights = np.zeros(removed.shape)
    couplings = []  # (row, column, weight) above the diagonal
    for (dy, dx), weight in _NEIGHBOURS:
        (ys, yn), (xs, xn) = _span(dy, height), _span(dx, width)
        weights[:, ys, xs] += weight
        rhs[:, :, ys, xs] += weight * known[:, :, yn, xn]
        if (dy, dx) > (0, 0):  # the neighbour comes later in row-major order
            both = removed[:, ys, xs] & removed[:, yn, xn]
            couplings.append((number[:, ys, xs][both], number[:, yn, xn][both], weight))
    diagonal = weights[removed]
    right = rhs.transpose(0, 2, 3, 1)[removed]  # [unknowns, C]
    if width <= _BANDED:
        # Unknowns are numbered in row-major order, so a neighbour's number is at most
        # width + 1 away: the system is banded and Cholesky solves it in
        # O(unknowns * width^2), without a fill-reducing ordering.
        band = max((int((c - r).max(initial=0)) for r, c, _ in couplings), default=0)
        bands = np.zeros((band + 1, unknowns))
        bands[band] = diagonal
        for row, col, weight in couplings:
            bands[band + row - col, col] = -weight
        with _BLAS.limit(limits=1, user_api="blas"):
            solution = solveh_banded(bands, right, check_finite=False)
    else:
        rows = np.concatenate(
            [np.arange(unknowns)] + [c[0] for c in couplings] + [c[1] for c in couplings]
        )
        cols = np.concatenate(
            [np.arange(unknowns)] + [c[1] for c in couplings] + [c[0] for c in couplings]
        )
        values = np.concatenate([diagonal] + [np.full(len(c[0]), -c[2]) for c in couplings] * 2)
        system = coo_matrix((values, (rows, cols)), shape=(unknowns, unknowns)).tocsc()
        with _BLAS.limit(limits=1, user_api="blas"):
            solution = spsolve(system, right)
    grid.transpose(0, 2, 3, 1)[removed] = solution.reshape(unknowns, -1)

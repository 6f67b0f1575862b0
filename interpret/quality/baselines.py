"""The controls every method is compared with (Adebayo et al. 2018, Sanity checks for saliency
maps, https://arxiv.org/abs/1810.03292).

- "random": uniform noise, seeded by the image's content, so the same image always gets the same
  map whichever batch, process or model it comes with. It carries no information: every faithful
  method must beat it on deletion and insertion, and, being blind to the model and the class, it
  fails both randomisation checks by construction.
- "edges": the Sobel gradient magnitude of the image (its channels averaged). It depends on the
  image alone, yet often looks like a saliency map; Adebayo et al. showed guided backprop's maps
  resemble it. A method whose maps are no more faithful than edges, or as insensitive to the
  model, explains the image rather than the model.
"""

from __future__ import annotations

import hashlib

import numpy as np
from scipy import ndimage

from cnnzoo.interpret.quality.settings import Explainer

__all__ = ["BASELINES", "baseline_explainer", "edge_map", "random_map"]

BASELINES = ("random", "edges")
_SOBEL = np.array([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]])  # d/dy, smoothed in x


def random_map(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """`[N, H, W]` uniform noise in [0, 1), one field per image seeded by its bytes."""
    x = np.ascontiguousarray(images, dtype=np.float32)
    fields = []
    for image in x:
        digest = int.from_bytes(hashlib.blake2b(image.tobytes(), digest_size=8).digest(), "big")
        fields.append(np.random.default_rng((seed, digest)).random(image.shape[1:]))
    return np.stack(fields) if fields else np.zeros((0, *x.shape[2:]))


def edge_map(images: np.ndarray) -> np.ndarray:
    """`[N, H, W]` Sobel gradient magnitude of each image's channel mean."""
    grey = np.asarray(images, dtype=np.float64).mean(axis=1)
    # 2-D kernels with a batch axis of 1: `ndimage.sobel` on the stack would also smooth
    # across neighbouring images
    dy = ndimage.correlate(grey, _SOBEL[None], mode="nearest")
    dx = ndimage.correlate(grey, _SOBEL.T[None], mode="nearest")
    return np.hypot(dx, dy)


def baseline_explainer(name: str, seed: int = 0) -> Explainer:
    """The baseline `name` ("random" or "edges") as an explainer (targets are ignored)."""
    if name == "random":
        return lambda images, targets: random_map(images, seed)
    if name == "edges":
        return lambda images, targets: edge_map(images)
    raise ValueError(f"unknown baseline {name!r}; baselines: {', '.join(BASELINES)}")

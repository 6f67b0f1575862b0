"""The two callables the metrics compute on, and the settings every metric shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cnnzoo.errors import InvalidInput

__all__ = ["FILLINGS", "MAX_STEPS", "Explainer", "Model", "QualitySettings", "softmax"]

# images [N, C, H, W] float32 -> logits [N, K]
Model = Callable[[np.ndarray], np.ndarray]
# (images [N, C, H, W] float32, targets [N] int64) -> maps [N, H, W]
Explainer = Callable[[np.ndarray, np.ndarray], np.ndarray]

FILLINGS = ("mean", "road")
MAX_STEPS = 256  # points of a curve (each a forward pass per image and method)
MAX_BATCH = 65_536  # model inputs per call


@dataclass(frozen=True)
class QualitySettings:
    """What every metric shares.

    Attributes:
        steps: a deletion or insertion curve removes or adds the pixels in `steps` equal steps:
            `steps + 1` points from 0 to 100 %.
        region: square regions of `region` x `region` pixels are removed together, ranked by the
            map's sum over them (1: single pixels).
        fillings: what replaces removed pixels: "mean" (the constant model input 0, i.e. the
            preprocessing's mean, the training set's mean for the zoo's models) and/or "road"
            (ROAD's noisy linear imputation).
        noise: the standard deviation of ROAD's noise, in model-input units.
        batch_size: model inputs per model call: the bound on the metrics' memory (perturbed
            images, ROAD's linear systems, the maps of one call).
        seed: seeds ROAD's noise, the random-map baseline, the random logit's class and the
            randomised weights.
    """

    steps: int = 16
    region: int = 1
    fillings: tuple[str, ...] = FILLINGS
    noise: float = 0.01
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= MAX_STEPS:
            raise InvalidInput(f"steps must be from 1 to {MAX_STEPS}, got {self.steps}")
        if self.region < 1:
            raise InvalidInput(f"region must be a positive number of pixels, got {self.region}")
        if not self.fillings or any(f not in FILLINGS for f in self.fillings):
            raise InvalidInput(
                f"fillings must list some of {', '.join(FILLINGS)}, got {list(self.fillings)}"
            )
        if not 0 <= self.noise <= 1:
            raise InvalidInput(f"noise must be between 0 and 1, got {self.noise}")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise InvalidInput(f"batch_size must be from 1 to {MAX_BATCH}, got {self.batch_size}")
        object.__setattr__(self, "fillings", tuple(dict.fromkeys(self.fillings)))

    def regions(self, height: int, width: int) -> int:
        """How many regions an image of `height` x `width` pixels has."""
        return -(-height // self.region) * -(-width // self.region)

    def check_image(self, height: int, width: int) -> None:
        """Refuse regions that do not fit the image or more steps than it has regions."""
        if self.region > min(height, width):
            raise InvalidInput(
                f"region {self.region} is larger than the {height}x{width} image; use at most "
                f"{min(height, width)}"
            )
        regions = self.regions(height, width)
        if self.steps > regions:
            raise InvalidInput(
                f"{self.steps} steps for {regions} regions of a {height}x{width} image; use at "
                f"most {regions} steps"
            )


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)

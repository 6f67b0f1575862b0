"""Randomisation sanity checks (Adebayo et al. 2018, "Sanity checks for saliency maps",
https://arxiv.org/abs/1810.03292).

Model parameter randomisation (MPRT): re-initialise the model's layers from the top (logits)
down, one more at a time, and compare each method's map of the same images and classes with the
trained model's. A map that explains what the trained model computes must change once the
weights it depends on are random; guided backprop and the deconvnet barely change while the top
layers are random, because their ReLU rules discard the negative gradients through which those
layers act (Nie et al. 2018, https://arxiv.org/abs/1805.07039).

Random logit (Sixt et al. 2020, https://arxiv.org/abs/1912.09818, as Quantus' `RandomLogit`):
compare the map of the explained class with the map of another class drawn at random; a map
that explains the class must differ.

Both take explainers, not a model: the backend supplies the stages of randomisation
(`Stages`: for each stage, its name and an explainer per method bound to the model as it is
then), so the same check runs on a PyTorch model or on ONNX graphs with randomised weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from cnnzoo.interpret.quality.settings import Explainer
from cnnzoo.interpret.quality.similarity import Similarity, similarity

__all__ = ["Randomisation", "Stages", "model_randomisation", "other_classes", "random_logit"]

# (stage name, method -> explainer of the model randomised up to that stage), top layer first
Stages = Iterable[tuple[str, Mapping[str, Explainer]]]


@dataclass(frozen=True)
class Randomisation:
    """One method's MPRT: per stage (the layer randomised last, cumulatively from the top),
    `[N]` similarities of each image's map with the trained model's map."""

    stages: tuple[str, ...]
    similarity: tuple[Similarity, ...]

    def per_stage(self, measure: str) -> np.ndarray:
        """`[stages, N]` of one measure ("rank_abs", "rank_signed" or "ssim")."""
        return np.stack([getattr(s, measure) for s in self.similarity])


def _maps(explainer: Explainer, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    maps = np.asarray(explainer(np.ascontiguousarray(images, dtype=np.float32), targets))
    if maps.shape != (len(images), *images.shape[2:]):
        raise ValueError(
            f"an explainer returned maps of shape {list(maps.shape)} for images of shape "
            f"{list(images.shape)}; expected [N, H, W]"
        )
    return maps


def model_randomisation(
    stages: Stages,
    images: np.ndarray,
    targets: np.ndarray,
    original: Mapping[str, np.ndarray],
) -> dict[str, Randomisation]:
    """MPRT for every method of `original`.

    Args:
        stages: the randomisation stages, top layer first (see `Stages`); each stage's
            explainers cover the methods of `original` (others are ignored).
        images: `[N, C, H, W]`.
        targets: `[N]` the classes of the original maps (kept at every stage).
        original: method -> `[N, H, W]` its maps of the trained model.
    """
    names: list[str] = []
    found: dict[str, list[Similarity]] = {method: [] for method in original}
    for stage, explainers in stages:
        names.append(stage)
        for method, maps in original.items():
            found[method].append(similarity(maps, _maps(explainers[method], images, targets)))
    return {
        method: Randomisation(stages=tuple(names), similarity=tuple(found[method]))
        for method in original
    }


def other_classes(
    targets: np.ndarray, classes: int, ids: np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    """For each image a class other than its target, uniformly, seeded by (seed, image id) so
    the draw never depends on batching."""
    targets = np.asarray(targets, dtype=np.int64)
    ids = np.arange(len(targets)) if ids is None else np.asarray(ids, dtype=np.int64)
    if classes < 2:
        raise ValueError("the random-logit check needs a model with at least two classes")
    draws = np.array(
        [np.random.default_rng((seed, int(i), 1)).integers(classes - 1) for i in ids],
        dtype=np.int64,
    )
    return draws + (draws >= targets)  # skip the target


def random_logit(
    explainers: Mapping[str, Explainer],
    images: np.ndarray,
    others: np.ndarray,
    original: Mapping[str, np.ndarray],
) -> dict[str, Similarity]:
    """Per method, `[N]` similarities of each image's map with its map for the class `others`
    (see `other_classes`)."""
    return {
        method: similarity(maps, _maps(explainers[method], images, others))
        for method, maps in original.items()
    }

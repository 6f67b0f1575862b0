"""Deletion and insertion curves (Petsiuk et al. 2018, RISE, https://arxiv.org/abs/1806.07421;
Samek et al. 2017's region perturbation; Bach et al. 2015's pixel flipping).

Deletion removes a map's regions from the image, most relevant first, in `steps` equal steps,
and records the model's probability of the explained class after each: a faithful map makes it
fall fast (small area under the curve). Insertion starts from the fully removed image and puts
the regions back in the same order: a faithful map makes it rise fast (large area). Each curve
has `steps + 1` points, from 0 % to 100 % of the regions; its area is the trapezoidal integral
over that fraction (0 to 1). Beside the probability, each point records whether the model still
(or already) predicts the explained class, the accuracy ROAD reports.

All (method, curve, image, step) points form one batch axis, cut into model calls of at most
`batch_size` inputs; the unperturbed image and the fully removed image are the same for every
method, so they are computed once per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cnnzoo.interpret.quality.fillings import linear_imputation
from cnnzoo.interpret.quality.ordering import region_ranks
from cnnzoo.interpret.quality.settings import Model, QualitySettings, softmax

__all__ = ["Curve", "Curves", "perturbation_curves", "predict"]

_DELETION, _INSERTION, _EVERYTHING = 0, 1, 2  # noise streams of ROAD's imputation


@dataclass(frozen=True)
class Curve:
    """One kind of curve for N images.

    Attributes:
        probability: `[N, steps + 1]` the explained class's probability at each point.
        hit: `[N, steps + 1]` whether the model's top class is the explained class there.
    """

    probability: np.ndarray
    hit: np.ndarray

    @property
    def steps(self) -> int:
        return self.probability.shape[1] - 1

    def area(self) -> np.ndarray:
        """`[N]` the area under each image's probability curve (fraction 0 to 1)."""
        return np.trapezoid(self.probability, dx=1.0 / self.steps, axis=1)


@dataclass(frozen=True)
class Curves:
    """A method's deletion and insertion curves with one filling."""

    deletion: Curve
    insertion: Curve


def predict(model: Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """`model`'s logits for `images`, at most `batch_size` per call, as float64."""
    parts = [
        np.asarray(model(np.ascontiguousarray(images[i : i + batch_size], dtype=np.float32)))
        for i in range(0, len(images), batch_size)
    ]
    logits = np.concatenate(parts).astype(np.float64)
    if logits.ndim != 2 or logits.shape[0] != len(images):
        raise ValueError(
            f"the model returned logits of shape {list(logits.shape)} for {len(images)} images; "
            "expected [N, classes]"
        )
    return logits


def _noise(
    settings: QualitySettings, ids: np.ndarray, stream: int, step: np.ndarray, shape: tuple
) -> np.ndarray:
    """ROAD's noise for each (image id, step) of one stream: a field of the image's shape drawn
    from its own generator, so it never depends on batching, sharding or the method."""
    fields = [
        np.random.default_rng((settings.seed, int(i), stream, int(s))).standard_normal(shape)
        for i, s in zip(ids, step, strict=True)
    ]
    return settings.noise * np.stack(fields) if fields else np.zeros((0, *shape))


def _filled(
    images: np.ndarray,
    removed: np.ndarray,
    filling: str,
    settings: QualitySettings,
    noise: tuple[np.ndarray, int, np.ndarray],
) -> np.ndarray:
    """`images` with the `removed` pixels replaced by `filling`; `noise` = (image ids, stream,
    steps) of each row, for ROAD."""
    keep = ~removed[:, None, :, :]
    if filling == "mean":
        return np.where(keep, images, 0.0)
    everything = removed.reshape(len(removed), -1).all(axis=1)
    out = linear_imputation(images, removed)
    out[everything] = 0.0  # nothing left to interpolate from: the mean, plus the noise
    ids, stream, steps = noise
    if settings.noise:
        out += np.where(keep, 0.0, _noise(settings, ids, stream, steps, images.shape[1:]))
    return out


def _score(
    model: Model, inputs: np.ndarray, targets: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    logits = predict(model, inputs, batch_size)
    rows = np.arange(len(targets))
    return softmax(logits)[rows, targets], logits.argmax(axis=1) == targets


def perturbation_curves(
    model: Model,
    images: np.ndarray,
    targets: np.ndarray,
    maps: Mapping[str, np.ndarray],
    settings: QualitySettings,
    filling: str,
    *,
    ids: Sequence[int] | np.ndarray | None = None,
    original: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, Curves]:
    """Every method's deletion and insertion curves with one filling.

    Args:
        model: images -> logits.
        images: `[N, C, H, W]` as the model takes them.
        targets: `[N]` the class each map explains.
        maps: method -> `[N, H, W]` its maps.
        settings: steps, region size, batch size, ROAD's noise and seed.
        filling: "mean" or "road" (see `cnnzoo.interpret.quality.fillings`).
        ids: a stable id per image (its dataset index) that seeds ROAD's noise (default: its
            position).
        original: (probability, hit) of the unperturbed images, if already known.
    """
    x = np.asarray(images, dtype=np.float64)
    n, _, height, width = x.shape
    settings.check_image(height, width)
    targets = np.asarray(targets, dtype=np.int64)
    ids = np.arange(n) if ids is None else np.asarray(ids, dtype=np.int64)
    batch = settings.batch_size
    steps = settings.steps
    regions = settings.regions(height, width)
    counts = (np.arange(steps + 1) * regions) // steps  # regions removed (or inserted) at a step
    if original is None:
        original = _score(model, x, targets, batch)
    everything = np.ones((n, height, width), dtype=bool)
    empty = _filled(x, everything, filling, settings, (ids, _EVERYTHING, np.full(n, steps)))
    blank = _score(model, empty, targets, batch)
    ranks = {method: region_ranks(m, settings.region)[0] for method, m in maps.items()}
    # every interior point: (method, curve, image, step)
    inner = np.arange(1, steps)
    points = [
        (method, curve, image, step)
        for method in maps
        for curve in (_DELETION, _INSERTION)
        for image in range(n)
        for step in inner
    ]
    probability = np.zeros(len(points))
    hit = np.zeros(len(points), dtype=bool)
    for start in range(0, len(points), batch):
        chunk = points[start : start + batch]
        image = np.array([p[2] for p in chunk], dtype=np.int64)
        step = np.array([p[3] for p in chunk], dtype=np.int64)
        curve = np.array([p[1] for p in chunk])
        rank = np.stack([ranks[p[0]][p[2]] for p in chunk])
        below = rank < counts[step][:, None, None]
        removed = np.where((curve == _DELETION)[:, None, None], below, ~below)
        rows = slice(start, start + len(chunk))
        streams = [
            _filled(x[image[c]], removed[c], filling, settings, (ids[image[c]], kind, step[c]))
            for kind in (_DELETION, _INSERTION)
            for c in [np.nonzero(curve == kind)[0]]
            if len(c)
        ]
        inputs = np.concatenate(streams) if len(streams) > 1 else streams[0]
        order = np.concatenate([np.nonzero(curve == k)[0] for k in (_DELETION, _INSERTION)])
        p, h = _score(model, inputs, targets[image[order]], batch)
        probability[rows][order], hit[rows][order] = p, h
    return {
        method: _assemble(probability, hit, m, len(maps), n, steps, original, blank)
        for m, method in enumerate(maps)
    }


def _assemble(
    probability: np.ndarray,
    hit: np.ndarray,
    m: int,
    methods: int,
    n: int,
    steps: int,
    original: tuple[np.ndarray, np.ndarray],
    blank: tuple[np.ndarray, np.ndarray],
) -> Curves:
    """Method `m`'s curves from the flat interior points and the shared end points."""
    inner = steps - 1
    shape = (methods, 2, n, inner)
    p = probability.reshape(shape)[m]
    h = hit.reshape(shape)[m]

    def curve(first: tuple[np.ndarray, np.ndarray], kind: int, last: tuple) -> Curve:
        return Curve(
            probability=np.column_stack([first[0], p[kind], last[0]]),
            hit=np.column_stack([first[1], h[kind], last[1]]),
        )

    return Curves(
        deletion=curve(original, _DELETION, blank), insertion=curve(blank, _INSERTION, original)
    )

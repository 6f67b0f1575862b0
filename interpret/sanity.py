"""The model-randomisation sanity check of Adebayo et al. 2018 ("Sanity checks for saliency
maps", https://arxiv.org/abs/1810.03292), with the maps kept for pictures.

Re-initialise the model's layers from the top (logits) down, one more at a time, and compare each
method's map of the same image and class with the map of the trained model. A map that explains
what the *trained* model does must change once the weights it depends on are random. The plain
gradient and Grad-CAM do; guided backprop and the deconvnet barely change while the top layers
are random, because their ReLU rules discard the negative gradients through which those layers
act and what is left mostly reconstructs the image (Nie et al. 2018,
https://arxiv.org/abs/1805.07039). Guided Grad-CAM sits between: its Grad-CAM factor follows
the randomisation, its guided-backprop factor does not (Adebayo et al.'s contrast).

This is the MPRT of `cnnzoo.interpret.quality` (the same re-initialisation,
`cnnzoo.interpret.torch_backend.randomise_layer`, and the same measures,
`cnnzoo.interpret.quality.similarity`): rank correlation of absolute values, signed rank
correlation and SSIM.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cnnzoo.interpret.explain import takes_layer
from cnnzoo.interpret.methods import get_method
from cnnzoo.interpret.quality.similarity import rank_correlation as _rank_correlation
from cnnzoo.interpret.quality.similarity import similarity
from cnnzoo.interpret.rules import Rule
from cnnzoo.interpret.torch_backend import randomisable, randomise_layer

__all__ = [
    "ADEBAYO_METHODS",
    "RandomisationResult",
    "cascading_randomisation",
    "rank_correlation",
]

# The rules and Grad-CAM, with guided Grad-CAM between them (Adebayo et al.'s Fig. 2)
ADEBAYO_METHODS = ("gradient", "deconvnet", "guided-backprop", "grad-cam", "guided-grad-cam")


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps' absolute values (ties share their average rank;
    0 for a map without variation)."""
    x = a.detach().abs().double().cpu().numpy().reshape(1, -1)
    y = b.detach().abs().double().cpu().numpy().reshape(1, -1)
    return float(_rank_correlation(x, y)[0])


@dataclass(frozen=True)
class RandomisationResult:
    """Maps and similarities per method and stage.

    Attributes:
        stages: "trained", then the name of each layer re-initialised (cumulatively, top down).
        maps: method -> `[stages, N, H, W]` channel-summed maps.
        correlation: method -> per stage, the mean over images of the rank correlation of
            absolute values with the trained model's map (1.0 at the "trained" stage).
        signed: the same for the signed rank correlation.
        ssim: the same for SSIM (maps in absolute value over their largest value).
    """

    stages: tuple[str, ...]
    maps: dict[str, torch.Tensor]
    correlation: dict[str, list[float]]
    signed: dict[str, list[float]]
    ssim: dict[str, list[float]]


def cascading_randomisation(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[str],
    methods: Sequence[str | Rule] = ADEBAYO_METHODS,
    targets: torch.Tensor | None = None,
    seed: int = 0,
    layer: str | None = None,
) -> RandomisationResult:
    """Run the check on a copy of `model` (the model itself is not touched).

    Args:
        images: preprocessed images `[N, C, H, W]`.
        layers: modules with parameters, re-initialised in this order (top layer first) with their
            own `reset_parameters`, each from its own seed (see `randomise_layer`).
        methods: the methods to compare (names of `cnnzoo.interpret.methods`, or rules).
        targets: class per image (default: the trained model's prediction, kept for every stage).
        seed: seeds the re-initialisation.
        layer: the layer of the methods that take one (Grad-CAM's).
    """
    names = [m.value if isinstance(m, Rule) else m for m in methods]
    work = copy.deepcopy(model).eval()
    modules = randomisable(work, layers)
    if targets is None:
        with torch.no_grad():
            targets = work(images).argmax(dim=1)

    def maps_now() -> dict[str, torch.Tensor]:
        found = {}
        for name in names:
            cls = get_method(name).load()
            attributor = cls(work, layer=layer) if layer and takes_layer(name) else cls(work)
            found[name] = attributor.attribute(images, target=targets).detach().sum(dim=1)
        return found

    per_stage = [maps_now()]
    for position, module in enumerate(modules):
        randomise_layer(module, seed, position)
        per_stage.append(maps_now())
    stacked = {name: torch.stack([stage[name] for stage in per_stage]) for name in names}
    measures: dict[str, dict[str, list[float]]] = {"rank_abs": {}, "rank_signed": {}, "ssim": {}}
    for name, maps in stacked.items():
        trained = maps[0].double().cpu().numpy()
        found = [similarity(trained, m.double().cpu().numpy()) for m in maps]
        for measure, table in measures.items():
            table[name] = [round(float(np.mean(getattr(s, measure))), 6) for s in found]
    return RandomisationResult(
        stages=("trained", *layers),
        maps=stacked,
        correlation=measures["rank_abs"],
        signed=measures["rank_signed"],
        ssim=measures["ssim"],
    )

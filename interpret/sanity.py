"""The model-randomisation sanity check of Adebayo et al. 2018 ("Sanity checks for saliency
maps", https://arxiv.org/abs/1810.03292).

Re-initialise the model's layers from the top (logits) down, one more at a time, and compare each
method's map of the same image and class with the map of the trained model. A map that explains
what the *trained* model does must change once the weights it depends on are random. The plain
gradient does; guided backprop and the deconvnet barely change while the top layers are random,
because their ReLU rules discard the negative gradients through which those layers act and what
is left mostly reconstructs the image (Nie et al. 2018, https://arxiv.org/abs/1805.07039).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from cnnzoo.interpret.attribution import for_method
from cnnzoo.interpret.modules import get_layer
from cnnzoo.interpret.rules import Rule

__all__ = ["RandomisationResult", "cascading_randomisation", "rank_correlation"]


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps' absolute values (ties broken by position)."""

    def ranks(t: torch.Tensor) -> torch.Tensor:
        flat = t.detach().abs().flatten().double()
        order = torch.argsort(flat, stable=True)
        r = torch.empty_like(flat)
        r[order] = torch.arange(flat.numel(), dtype=torch.float64)
        return r - r.mean()

    ra, rb = ranks(a), ranks(b)
    denominator = float(ra.norm() * rb.norm())
    if not denominator:
        return 0.0
    return max(-1.0, min(1.0, float(ra @ rb) / denominator))  # rounding can pass 1 by an ulp


@dataclass(frozen=True)
class RandomisationResult:
    """Maps and similarities per method and stage.

    Attributes:
        stages: "trained", then the name of each layer re-initialised (cumulatively, top down).
        maps: method -> `[stages, N, H, W]` channel-summed maps.
        correlation: method -> per stage, the mean over images of the rank correlation with the
            trained model's map (1.0 at the "trained" stage).
    """

    stages: tuple[str, ...]
    maps: dict[str, torch.Tensor]
    correlation: dict[str, list[float]]


def cascading_randomisation(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[str],
    methods: Sequence[Rule] = (Rule.GRADIENT, Rule.DECONVNET, Rule.GUIDED),
    targets: torch.Tensor | None = None,
    seed: int = 0,
) -> RandomisationResult:
    """Run the check on a copy of `model` (the model itself is not touched).

    Args:
        images: preprocessed images `[N, C, H, W]`.
        layers: modules with parameters, re-initialised in this order (top layer first) with their
            own `reset_parameters`.
        methods: the rules to compare.
        targets: class per image (default: the trained model's prediction, kept for every stage).
        seed: seeds the re-initialisation.
    """
    work = copy.deepcopy(model).eval()
    if targets is None:
        with torch.no_grad():
            targets = work(images).argmax(dim=1)
    modules = [get_layer(work, name) for name in layers]
    generator_state = torch.random.get_rng_state()
    stages = ["trained", *layers]
    maps: dict[str, list[torch.Tensor]] = {rule.value: [] for rule in methods}
    try:
        torch.manual_seed(seed)
        for stage in range(len(stages)):
            if stage > 0:
                module = modules[stage - 1]
                if not hasattr(module, "reset_parameters"):
                    raise ValueError(f"layer {layers[stage - 1]!r} has no reset_parameters()")
                module.reset_parameters()
            for rule in methods:
                maps[rule.value].append(
                    for_method(work, rule).attribute(images, target=targets).sum(dim=1)
                )
    finally:
        torch.random.set_rng_state(generator_state)
    stacked = {name: torch.stack(per_stage) for name, per_stage in maps.items()}
    correlation = {
        name: [
            sum(rank_correlation(m[0, i], m[s, i]) for i in range(images.shape[0]))
            / images.shape[0]
            for s in range(len(stages))
        ]
        for name, m in stacked.items()
    }
    return RandomisationResult(stages=tuple(stages), maps=stacked, correlation=correlation)

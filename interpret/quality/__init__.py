"""How trustworthy an explanation is, measured on the user's own model and data.

A saliency map looks convincing whether or not it says anything about the model (Adebayo et al.
2018, https://arxiv.org/abs/1810.03292), so every method cnnzoo offers can report its own
quality:

- faithfulness (`curves`): deletion and insertion curves and their areas (pixels removed or
  added in the map's order, in steps), with two fillings (`fillings`): a constant (the dataset
  mean) and ROAD's noisy linear imputation (Rong et al. 2022, https://arxiv.org/abs/2202.00449),
  which leaks less of the removed pixels' shape to the model; Average Drop and Increase in
  Confidence (`confidence`; Chattopadhay et al. 2018, https://arxiv.org/abs/1710.11063);
- randomisation sanity checks (`sanity`): model parameter randomisation cascading from the top
  layer (MPRT) and the map of another class (random logit), each compared with the original map
  by rank correlation (of absolute values and signed) and SSIM (`similarity`);
- baselines (`baselines`): a random map and an edge detector, Adebayo et al.'s controls.

Everything here computes on numpy arrays through two callables, so a backend plugs in without
changing the metrics: a *model*, images `[N, C, H, W]` float32 -> logits `[N, K]`, and an
*explainer*, (images, targets `[N]` int) -> maps `[N, H, W]`. `cnnzoo.interpret.torch_backend`
makes both from a PyTorch model and a method of `cnnzoo.interpret.methods`; an ONNX Runtime
session makes the model just as well. The package imports no torch (an import-linter contract),
so the server can compute the figures too. `evaluate` is the entry point: maps, a model
callable and settings in, figures out.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "QualitySettings": "cnnzoo.interpret.quality.settings",
    "Explainer": "cnnzoo.interpret.quality.settings",
    "Model": "cnnzoo.interpret.quality.settings",
    "evaluate": "cnnzoo.interpret.quality.report",
    "MethodQuality": "cnnzoo.interpret.quality.report",
    "summarise": "cnnzoo.interpret.quality.report",
    "reading": "cnnzoo.interpret.quality.report",
    "rank_correlation": "cnnzoo.interpret.quality.similarity",
    "ssim": "cnnzoo.interpret.quality.similarity",
    "BASELINES": "cnnzoo.interpret.quality.baselines",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cnnzoo.interpret.quality' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

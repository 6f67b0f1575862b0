"""interpret: Zeiler & Fergus (2014)-style views of the zoo's CNNs.

Modules (all under `cnnzoo.interpret`): the method table (`methods`, torch-free); gradient,
deconvnet and guided-backprop attribution (`attribution`, rules in `rules`), occlusion
(`occlusion`), Grad-CAM (`gradcam`); batched unit projections (`projection`); modules by name
(`modules`), layers and receptive fields (`layers`, `receptive_field`); streaming top-k
activations (`topk`, `scan`); activation maximisation (`actmax`); pictures (`render`); `explain`
for one image (`explain`) and batch jobs (`jobs`); how trustworthy each method's maps are
(`quality`, torch-free, on numpy callables that `torch_backend` makes from a PyTorch model) and
the randomisation sanity check with its maps (`sanity`).

Names below are imported on first use, so `import cnnzoo.interpret` (and `cnnzoo --help`) does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Deconvnet": "cnnzoo.interpret.attribution",
    "Gradient": "cnnzoo.interpret.attribution",
    "GuidedBackprop": "cnnzoo.interpret.attribution",
    "ReluRuleAttribution": "cnnzoo.interpret.attribution",
    "Rule": "cnnzoo.interpret.rules",
    "relu_rule": "cnnzoo.interpret.rules",
    "left_as_found": "cnnzoo.interpret.rules",
    "Unit": "cnnzoo.interpret.projection",
    "project_units": "cnnzoo.interpret.projection",
    "ReceptiveField": "cnnzoo.interpret.receptive_field",
    "support_box": "cnnzoo.interpret.receptive_field",
    "LayerInfo": "cnnzoo.interpret.layers",
    "describe_layers": "cnnzoo.interpret.layers",
    "TopK": "cnnzoo.interpret.topk",
    "scan_topk": "cnnzoo.interpret.scan",
    "occlusion_maps": "cnnzoo.interpret.occlusion",
    "METHODS": "cnnzoo.interpret.methods",
    "get_method": "cnnzoo.interpret.methods",
    "OcclusionSensitivity": "cnnzoo.interpret.occlusion",
    "GradCam": "cnnzoo.interpret.gradcam",
    "GuidedGradCam": "cnnzoo.interpret.gradcam",
    "explain": "cnnzoo.interpret.explain",
    "Regularisers": "cnnzoo.interpret.actmax",
    "maximise_units": "cnnzoo.interpret.actmax",
    "Explanation": "cnnzoo.interpret.explain",
    "load_job": "cnnzoo.interpret.jobs",
    "run_job": "cnnzoo.interpret.jobs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cnnzoo.interpret' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

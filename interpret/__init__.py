"""interpret: Zeiler & Fergus (2014)-style views of the zoo's CNNs.

Gradient, deconvnet and guided-backprop attribution (`interpret.attribution`, rules in
`interpret.rules`), batched unit projections (`interpret.projection`), receptive fields
(`interpret.layers`, `interpret.receptive_field`), streaming top-k activations
(`interpret.topk`, `interpret.scan`), occlusion (`interpret.occlusion`), pictures
(`interpret.render`), `explain` for one image (`interpret.explain`) and batch jobs
(`interpret.jobs`).

Names below are imported on first use, so `import interpret` (and `cnnzoo --help`) does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Deconvnet": "interpret.attribution",
    "Gradient": "interpret.attribution",
    "GuidedBackprop": "interpret.attribution",
    "ReluRuleAttribution": "interpret.attribution",
    "Rule": "interpret.rules",
    "relu_rule": "interpret.rules",
    "left_as_found": "interpret.rules",
    "Unit": "interpret.projection",
    "project_units": "interpret.projection",
    "ReceptiveField": "interpret.receptive_field",
    "support_box": "interpret.receptive_field",
    "LayerInfo": "interpret.layers",
    "describe_layers": "interpret.layers",
    "TopK": "interpret.topk",
    "scan_topk": "interpret.scan",
    "occlusion_maps": "interpret.occlusion",
    "METHODS": "interpret.explain",
    "Explanation": "interpret.explain",
    "load_job": "interpret.jobs",
    "run_job": "interpret.jobs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'interpret' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

"""Explanations as ONNX graphs: a classifier's graph in, a graph out that computes the forward
pass and one explanation method's backward rule in a single run, with standard ONNX operators
only, so ONNX Runtime (or Triton) serves explanations without PyTorch.

torch-free by contract (onnx, numpy and Pillow only; an import-linter contract checks it), so
the server imports it. Names below are imported on first use: listing `GRAPH_METHODS` does not
import onnx.

    >>> import onnx
    >>> from cnnzoo.interpret.graphs import build_explanation
    >>> graph = build_explanation(onnx.load("model.onnx"), "guided-backprop")
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GRAPH_METHODS": "cnnzoo.interpret.graphs.methods",
    "GraphMethod": "cnnzoo.interpret.graphs.methods",
    "get_graph_method": "cnnzoo.interpret.graphs.methods",
    "build_explanation": "cnnzoo.interpret.graphs.build",
    "gauss_legendre": "cnnzoo.interpret.graphs.build",
    "Layer": "cnnzoo.interpret.graphs.layers",
    "explanation_layers": "cnnzoo.interpret.graphs.layers",
    "layer_index": "cnnzoo.interpret.graphs.layers",
    "check_classifier": "cnnzoo.interpret.graphs.integrity",
    "explanation_facts": "cnnzoo.interpret.graphs.integrity",
    "attribution_rgb": "cnnzoo.interpret.graphs.render",
    "attribution_png": "cnnzoo.interpret.graphs.render",
    "png_bytes": "cnnzoo.interpret.graphs.render",
    "projection_png": "cnnzoo.interpret.graphs.render",
    "projection_rgb": "cnnzoo.interpret.graphs.render",
    "default_window": "cnnzoo.interpret.graphs.occlusion",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cnnzoo.interpret.graphs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

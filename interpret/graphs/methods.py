"""The explanation graphs by method name: plain data, no onnx import (the CLI's choices and
the server's refusal of an unknown method cost nothing).

Each method names how its graph is built (`kind`), which backward rule its ReLUs follow
(`rule`, see `cnnzoo.interpret.graphs.backward`), the settings it takes with their defaults,
and whether it has the `layer` input. Names match the PyTorch method table
(`cnnzoo.interpret.methods`) where both have the method.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cnnzoo.errors import InvalidInput

__all__ = ["GRAPH_METHODS", "GraphMethod", "get_graph_method"]

GRADIENT, DECONVNET, GUIDED = "gradient", "deconvnet", "guided-backprop"

# Settings every method takes (written into the graph's metadata).
COMMON_SETTINGS: Mapping[str, Any] = MappingProxyType({"explains": None, "classifier_sha256": None})


@dataclass(frozen=True)
class GraphMethod:
    """One explanation graph.

    Attributes:
        name: the method's name (the suffix of the Triton model `M.<name>`).
        kind: "class" (explains a class score; input `target`), "unit" (projects one unit of a
            layer; inputs `layer`, `channel`, `position`), "occlusion" (forward passes only) or
            "activations" (no explanation: every layer's output, one graph output each).
        rule: the ReLU backward rule of its backward pass (`gradient`, `deconvnet`,
            `guided-backprop`); occlusion has none.
        summary: one line for help texts.
        layer_input: whether the graph has the `layer` input.
        settings: the settings `build_explanation` takes for it, with their defaults.
    """

    name: str
    kind: str
    rule: str | None
    summary: str
    layer_input: bool = False
    settings: Mapping[str, Any] = field(default_factory=dict)


_LAYERS = {"layers": None}
_CAM = {"layers": None, "default_layer": None}

TABLE: tuple[GraphMethod, ...] = (
    GraphMethod("gradient", "class", GRADIENT, "plain input gradient (Simonyan et al. 2014)"),
    GraphMethod(
        "deconvnet", "class", DECONVNET, "Zeiler & Fergus 2014 deconvnet: ReLUs pass relu(g) back"
    ),
    GraphMethod(
        "guided-backprop",
        "class",
        GUIDED,
        "guided backpropagation (Springenberg et al. 2015): relu(g) where the input was positive",
    ),
    GraphMethod(
        "input-x-gradient", "class", GRADIENT, "input times its gradient (Shrikumar et al. 2016)"
    ),
    GraphMethod(
        "integrated-gradients",
        "class",
        GRADIENT,
        "integrated gradients (Sundararajan et al. 2017): Gauss-Legendre steps from a baseline",
        settings={"steps": 50, "baseline": 0.0},
    ),
    GraphMethod(
        "grad-cam",
        "class",
        GRADIENT,
        "Grad-CAM (Selvaraju et al. 2017) of a spatial layer, upsampled bilinearly to the input",
        layer_input=True,
        settings=_CAM,
    ),
    GraphMethod(
        "guided-grad-cam",
        "class",
        GUIDED,
        "guided backprop times the upsampled Grad-CAM (Selvaraju et al. 2017)",
        layer_input=True,
        settings=_CAM,
    ),
    GraphMethod(
        "occlusion",
        "occlusion",
        None,
        "drop of the class probability under a sliding grey square (Zeiler & Fergus 2014)",
        settings={"window": None, "stride": None},
    ),
    GraphMethod(
        "deconvnet-unit",
        "unit",
        DECONVNET,
        "one unit of a layer projected to pixels by the deconvnet (Zeiler & Fergus 2014, Fig. 2)",
        layer_input=True,
        settings=_LAYERS,
    ),
    GraphMethod(
        "guided-backprop-unit",
        "unit",
        GUIDED,
        "one unit of a layer projected to pixels by guided backprop",
        layer_input=True,
        settings=_LAYERS,
    ),
    GraphMethod(
        "activations",
        "activations",
        None,
        "every layer's output for the image, one output per layer (the explorer's channel maps)",
        settings=_LAYERS,
    ),
    GraphMethod(
        "gradient-unit",
        "unit",
        GRADIENT,
        "the gradient of one unit of a layer with respect to the input",
        layer_input=True,
        settings=_LAYERS,
    ),
)

GRAPH_METHODS: tuple[str, ...] = tuple(method.name for method in TABLE)
_BY_NAME = {method.name: method for method in TABLE}


def get_graph_method(name: str) -> GraphMethod:
    """The row for `name`; `InvalidInput` lists the valid names otherwise."""
    method = _BY_NAME.get(name)
    if method is None:
        raise InvalidInput(
            f"unknown explanation method {name!r}; valid methods: {', '.join(GRAPH_METHODS)}"
        )
    return method


def resolve_settings(method: GraphMethod, given: Mapping[str, Any]) -> dict[str, Any]:
    """The method's settings with `given` applied; unknown names raise `InvalidInput`."""
    valid = {**COMMON_SETTINGS, **method.settings}
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise InvalidInput(
            f"{method.name} takes no setting {', '.join(map(repr, unknown))}; its settings: "
            f"{', '.join(sorted(valid))}"
        )
    return {**valid, **given}

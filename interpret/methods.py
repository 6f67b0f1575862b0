"""The attribution methods by name: the one table that `cnnzoo explain`, its `--method` choices,
job files and the server's Explain RPC all read.

The table is plain data (no torch): each row names its implementation as "module:Class",
imported on first use, so listing the methods costs nothing (`cnnzoo --help`, reading a job
file, refusing an unknown method in the server before any image is decoded).

Every implementation is built from the model alone, `Class(model)`, and has Captum's
`attribute(inputs, target)`, returning per-pixel maps `[N, C, H, W]` (or `[N, 1, H, W]` where
one value covers every channel) that `cnnzoo.interpret.explain` sums over channels, and
`warnings()`, the reasons its maps of that model cannot depend on the input (empty when they
can). Adding a method is its module and one row here.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from cnnzoo.errors import InvalidInput

__all__ = ["METHODS", "RULE_METHODS", "TABLE", "Attribution", "AttributionClass", "Method",
           "get_method"]  # fmt: skip


class Attribution(Protocol):
    """What every method's implementation is, once built from a model (see the module
    docstring). Tensors are `torch.Tensor`s, spelled `Any` here: the table never imports torch
    (an import-linter contract)."""

    def attribute(self, inputs: Any, target: Any = None) -> Any:
        """Per-pixel maps `[N, C, H, W]` (or `[N, 1, H, W]`) of `inputs` (`[N, C, H, W]`) for
        `target` (a class index, one per image, or None where the method needs none)."""
        ...

    def warnings(self) -> Sequence[str]:
        """Why this model's maps cannot depend on the input, if they cannot."""
        ...


class AttributionClass(Protocol):
    """An implementation's class: built from the model alone (some also take `layer`)."""

    def __call__(self, model: Any, /, *args: Any, **kwargs: Any) -> Attribution: ...


@dataclass(frozen=True)
class Method:
    """One attribution method.

    Attributes:
        name: how the CLI, job files and the Explain RPC spell it.
        implementation: "module:Class" of the class that computes it.
        summary: one line for help texts.
        rule: whether it is a ReLU backward rule (`cnnzoo.interpret.rules.Rule`), which can also
            project single units of a layer back to pixels (max-activation projections).
    """

    name: str
    implementation: str
    summary: str
    rule: bool = False

    def load(self) -> AttributionClass:
        """The implementing class (imports its module, and so torch)."""
        module, _, cls = self.implementation.partition(":")
        return cast(AttributionClass, getattr(importlib.import_module(module), cls))


TABLE: tuple[Method, ...] = (
    Method(
        "gradient",
        "cnnzoo.interpret.attribution:Gradient",
        "plain input gradient (Simonyan et al. 2014)",
        rule=True,
    ),
    Method(
        "deconvnet",
        "cnnzoo.interpret.attribution:Deconvnet",
        "Zeiler & Fergus 2014 deconvnet: ReLUs pass relu(g) back",
        rule=True,
    ),
    Method(
        "guided-backprop",
        "cnnzoo.interpret.attribution:GuidedBackprop",
        "guided backpropagation (Springenberg et al. 2015): relu(g) where the input was positive",
        rule=True,
    ),
    Method(
        "occlusion",
        "cnnzoo.interpret.occlusion:OcclusionSensitivity",
        "drop of the class probability under a sliding grey square (Zeiler & Fergus 2014)",
    ),
    Method(
        "grad-cam",
        "cnnzoo.interpret.gradcam:GradCam",
        "Grad-CAM (Selvaraju et al. 2017) of the last spatial layer, upsampled to the input",
    ),
    Method(
        "guided-grad-cam",
        "cnnzoo.interpret.gradcam:GuidedGradCam",
        "guided backprop times the upsampled Grad-CAM (Selvaraju et al. 2017)",
    ),
    Method(
        "input-x-gradient",
        "cnnzoo.interpret.gradient_methods:InputXGradient",
        "input times its gradient (Shrikumar et al. 2016)",
    ),
    Method(
        "integrated-gradients",
        "cnnzoo.interpret.gradient_methods:IntegratedGradients",
        "integrated gradients (Sundararajan et al. 2017) from a zero baseline, 50 Gauss-Legendre "
        "steps",
    ),
)

METHODS: tuple[str, ...] = tuple(method.name for method in TABLE)
RULE_METHODS: tuple[str, ...] = tuple(method.name for method in TABLE if method.rule)
_BY_NAME = {method.name: method for method in TABLE}


def get_method(name: str) -> Method:
    """The row for `name`; `InvalidInput` lists the valid names otherwise."""
    method = _BY_NAME.get(name)
    if method is None:
        raise InvalidInput(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return method

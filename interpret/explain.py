"""Explain one image: the narrow entry point that `cnnzoo explain` and the server's Explain RPC
both call, so the two give identical maps.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cnnzoo.errors import InvalidInput
from cnnzoo.interpret.methods import METHODS, get_method
from cnnzoo.interpret.render import attribution_rgb, png_bytes
from cnnzoo.interpret.rules import left_as_found

__all__ = ["METHODS", "Explanation", "UnitProjection", "explain", "project_unit", "takes_layer"]


def takes_layer(method: str) -> bool:
    """Whether the method's class takes a `layer` (Grad-CAM and guided Grad-CAM do)."""
    return "layer" in inspect.signature(get_method(method).load()).parameters


@dataclass
class Explanation:
    """What `explain` returns.

    Attributes:
        method: one of `cnnzoo.interpret.methods.METHODS`.
        target: the class explained.
        score: softmax probability of `target` for the image.
        attribution: float32 `[H, W]` map: the method's attribution summed over input channels
            (for gradient, deconvnet and guided backprop the rule-modified gradient; for
            occlusion the mean drop of the target probability when a grey square covers the
            pixel; for Grad-CAM the upsampled class activation map).
        png: `attribution` rendered image-sized (white = 0, red = positive, blue = negative).
        warnings: why the map cannot depend on the input, if it cannot (e.g. deconvnet on a
            model without max-pooling: every image gets the same map).
    """

    method: str
    target: int
    score: float
    attribution: np.ndarray
    png: bytes
    warnings: tuple[str, ...] = ()


def explain(
    model: nn.Module,
    x: torch.Tensor,
    method: str,
    target: int | None = None,
    *,
    layer: str | None = None,
) -> Explanation:
    """Attribute one preprocessed image to a class.

    Args:
        model: the classifier (nn.ReLU modules only for the ReLU-rule methods).
        x: one preprocessed image `[1, C, H, W]`, float32.
        method: one of `cnnzoo.interpret.methods.METHODS`.
        target: class index; None explains the predicted class.
        layer: the layer of the methods that take one (Grad-CAM and guided Grad-CAM; default:
            the last spatial layer that runs once).

    Raises:
        InvalidInput: an unknown method, a badly shaped input, a target out of range, or a layer
            for a method that takes none.
        LayerNotFound: an unknown layer (lists the valid names).
        UnsupportedModel: the model calls functional ReLU or has an activation other than ReLU
            (the ReLU-rule methods), or a layer the method needs runs more than once.
    """
    implementation = get_method(method).load()  # InvalidInput lists the methods
    if layer is not None and "layer" not in inspect.signature(implementation).parameters:
        takes = [
            m for m in METHODS if "layer" in inspect.signature(get_method(m).load()).parameters
        ]
        raise InvalidInput(f"method {method} takes no layer; a layer applies to {', '.join(takes)}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] != 1:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidInput(f"explain takes one preprocessed image [1, C, H, W], got {shape}")
    if not torch.is_floating_point(x):
        raise InvalidInput(f"the image must be a float tensor, got {x.dtype}")
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    with torch.inference_mode(False):
        x = x.detach().clone()
        with left_as_found(model), torch.no_grad():
            probabilities = torch.softmax(model(x), dim=1)[0]
        classes = probabilities.shape[0]
        if target is None:
            target = int(probabilities.argmax())
        elif not 0 <= int(target) < classes:
            raise InvalidInput(f"target {target} is out of range: the model has {classes} classes")
        target = int(target)
        attributor = implementation(model) if layer is None else implementation(model, layer=layer)
        maps = attributor.attribute(x, target=target)
        attribution = maps[0].sum(dim=0)
    array = attribution.detach().float().cpu().numpy().astype(np.float32)
    return Explanation(
        method=method,
        target=target,
        score=float(probabilities[target]),
        attribution=array,
        png=png_bytes(attribution_rgb(torch.from_numpy(array))),
        warnings=tuple(attributor.warnings()),
    )


@dataclass
class UnitProjection:
    """What `project_unit` returns.

    Attributes:
        layer, channel: the unit's layer and channel; `position` its (y, x) in the layer's map
            ((0, 0) for a flat layer).
        activation: the unit's value for the image.
        projection: float32 `[C, H, W]`, the rule-modified gradient of the unit.
        png: `projection` as an image (Zeiler & Fergus: grey is 0).
    """

    layer: str
    channel: int
    position: tuple[int, int]
    activation: float
    projection: np.ndarray
    png: bytes


_UNIT_RULES = ("deconvnet", "guided-backprop", "gradient")


def project_unit(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    channel: int,
    position: tuple[int, int] | None = None,
    rule: str = "deconvnet",
) -> UnitProjection:
    """Project one unit of `layer` for one preprocessed image `[1, C, H, W]` back to pixels: the
    map the explorer shows for a clicked channel. `position` None: the channel's strongest
    position for this image (the first in row-major order on ties, as ONNX's ArgMax).

    Raises:
        InvalidInput: a channel or position outside the layer, a position for a flat layer, an
            unknown rule.
        LayerNotFound: an unknown layer.
    """
    from cnnzoo.interpret.forward import forward_to
    from cnnzoo.interpret.projection import Unit, project_units
    from cnnzoo.interpret.render import projection_rgb
    from cnnzoo.interpret.rules import Rule

    rules = {"deconvnet": Rule.DECONVNET, "guided-backprop": Rule.GUIDED, "gradient": Rule.GRADIENT}
    if rule not in rules:
        raise InvalidInput(f"a unit is projected by {', '.join(_UNIT_RULES)}, not {rule!r}")
    with torch.no_grad(), left_as_found(model):
        out = forward_to(model, [layer], x, lambda _, t: t.detach().clone())[layer][0]
    if not 0 <= channel < out.shape[0]:
        raise InvalidInput(
            f"channel {channel} is not in layer {layer!r} ({out.shape[0]} channels: 0 to "
            f"{out.shape[0] - 1})"
        )
    if out.dim() == 1:
        if position is not None:
            raise InvalidInput(f"layer {layer!r} is flat ({out.shape[0]} features): no position")
        y, x_ = 0, 0
        value = float(out[channel])
    else:
        plane = out[channel]
        if position is None:
            flat = int(torch.argmax(plane.reshape(-1)))
            position = (flat // plane.shape[1], flat % plane.shape[1])
        y, x_ = position
        if not (0 <= y < plane.shape[0] and 0 <= x_ < plane.shape[1]):
            raise InvalidInput(
                f"position ({y}, {x_}) is outside layer {layer!r}'s "
                f"{plane.shape[0]}x{plane.shape[1]} map"
            )
        value = float(plane[y, x_])
    maps = project_units(model, layer, x, [Unit(0, channel, y, x_)], rules[rule])
    projection = maps[0].detach().float().cpu().numpy().astype(np.float32)
    return UnitProjection(
        layer, channel, (y, x_), value, projection,
        png_bytes(projection_rgb(torch.from_numpy(projection))),
    )  # fmt: skip

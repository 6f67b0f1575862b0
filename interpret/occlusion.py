"""Occlusion sensitivity (Zeiler & Fergus 2014, Fig. 7).

A grey square (zero in the normalised input, i.e. the dataset mean) slides over the image. For
each position of the square one records (a) the total activation of the feature map that is
strongest in the unoccluded image, (b) the probability of the true class and (c) the top label.
If the class depends on the object, (b) drops where the square covers it.

`OcclusionSensitivity` is the per-pixel version that `explain` uses: Captum's `Occlusion` with
the same square, each pixel getting the mean probability drop over the positions that cover it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from captum.attr import Occlusion
from torch import nn

from cnnzoo.errors import InvalidInput
from cnnzoo.interpret.attribution import Target, checked_forward
from cnnzoo.interpret.graphs.occlusion import default_window  # shared with the graphs
from cnnzoo.interpret.modules import get_layer, require_single_run
from cnnzoo.interpret.rules import left_as_found

__all__ = ["OcclusionMaps", "OcclusionSensitivity", "default_window", "occlusion_maps"]


def _check_window(size: tuple[int, int], window: int, stride: int) -> None:
    if not 1 <= window <= min(size):
        raise InvalidInput(f"occlusion window must be between 1 and {min(size)}, got {window}")
    if stride < 1:
        raise InvalidInput(f"occlusion stride must be at least 1, got {stride}")


class OcclusionSensitivity(Occlusion):
    r"""Per-pixel drop of the target's softmax probability when a grey (zero) square covers the
    pixel, averaged over the square's positions that cover it: Captum's `Occlusion` with the
    square of Zeiler & Fergus (2014) Fig. 7 covering every channel at once.

    Args:
        model: the classifier (run in eval mode; its flags are restored after each call).
        window, stride: the square's side and step in pixels (default: `default_window` of the
            image's shorter side).
        batch_size: occluded copies per forward pass.
        scores: "probability" (softmax of the logits, what `explain` maps) or "logit".
    """

    def __init__(
        self,
        model: nn.Module,
        window: int | None = None,
        stride: int | None = None,
        batch_size: int = 64,
        scores: str = "probability",
    ) -> None:
        if scores not in ("probability", "logit"):
            raise InvalidInput(f"scores must be 'probability' or 'logit', got {scores!r}")
        forward = model if scores == "logit" else (lambda x: torch.softmax(model(x), dim=1))
        super().__init__(forward)
        self.scores = forward
        self.model = model
        self.window = window
        self.stride = stride
        self.batch_size = batch_size

    def attribute(self, inputs: torch.Tensor, target: Target) -> torch.Tensor:  # type: ignore[override]
        r"""
        Args:
            inputs: preprocessed images `[N, C, H, W]`.
            target: the output index, for all images or one per image.

        Returns:
            `[N, 1, H, W]`: one value per pixel (the square covers all channels alike).
        """
        channels, height, width = inputs.shape[1:]
        default = default_window(min(height, width))
        window = self.window or default[0]
        stride = self.stride or default[1]
        _check_window((height, width), window, stride)
        # Captum runs the forward function on batches of occluded copies (targets repeated to
        # match), so the targets are checked once, against the unoccluded images' outputs.
        self.forward_func = self.scores
        with left_as_found(self.model), torch.no_grad():
            checked_forward(self.scores, target)(inputs.detach())
            maps = super().attribute(
                inputs.detach(),
                sliding_window_shapes=(channels, window, window),
                strides=(channels, stride, stride),
                baselines=0.0,
                target=target,
                perturbations_per_eval=self.batch_size,
            )
        return maps[:, :1]

    def warnings(self) -> tuple[str, ...]:
        """Occlusion always depends on the input: nothing to warn about."""
        return ()


@dataclass(frozen=True)
class OcclusionMaps:
    """The three maps of Fig. 7, one value per position of the square (row-major grid).

    Attributes:
        window, stride: the square's side and step.
        feature_layer, feature_channel: the feature map tracked in `activation`.
        activation: `[P, Q]` total (rectified) activation of that map.
        probability: `[P, Q]` softmax probability of `true_class`.
        top_label: `[P, Q]` most probable class.
        true_class: the class whose probability is mapped.
    """

    window: int
    stride: int
    feature_layer: str
    feature_channel: int
    activation: torch.Tensor
    probability: torch.Tensor
    top_label: torch.Tensor
    true_class: int

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the square at grid position (row, col)."""
        top, left = row * self.stride, col * self.stride
        return top, left, top + self.window, left + self.window


def occlusion_maps(
    model: nn.Module,
    x: torch.Tensor,
    true_class: int,
    feature_layer: str,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 64,
) -> OcclusionMaps:
    """Slide a grey square over `x` `[1, C, H, W]` and record the three maps of Fig. 7.

    Args:
        feature_layer: the layer whose strongest map (in the unoccluded image) is tracked; the
            paper uses layer 5, the last convolution.
    """
    height, width = x.shape[-2:]
    default = default_window(min(height, width))
    window = window or default[0]
    stride = stride or default[1]
    _check_window((height, width), window, stride)
    require_single_run(model, [feature_layer], x)  # also LayerNotFound
    layer = get_layer(model, feature_layer)
    rows = (height - window) // stride + 1
    cols = (width - window) // stride + 1

    def run(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: dict[str, torch.Tensor] = {}

        def keep(module: nn.Module, args: object, out: torch.Tensor) -> None:
            captured["map"] = out.detach().clamp(min=0).flatten(2).sum(dim=2)

        handle = layer.register_forward_hook(keep)
        try:
            logits = model(batch)
        finally:
            handle.remove()
        return logits, captured["map"]

    with left_as_found(model), torch.no_grad():
        logits, totals = run(x)
        classes = logits.shape[1]
        if not 0 <= true_class < classes:
            raise InvalidInput(
                f"true class {true_class} is out of range: the model has {classes} classes "
                f"(0 to {classes - 1})"
            )
        channel = int(totals[0].argmax())
        boxes = [(r * stride, c * stride) for r in range(rows) for c in range(cols)]
        activation, probability, top = [], [], []
        for start in range(0, len(boxes), batch_size):
            chunk = boxes[start : start + batch_size]
            batch = x.detach().repeat(len(chunk), 1, 1, 1)
            for i, (top_y, left_x) in enumerate(chunk):
                batch[i, :, top_y : top_y + window, left_x : left_x + window] = 0
            logits, maps = run(batch)
            probs = torch.softmax(logits, dim=1)
            activation.append(maps[:, channel])
            probability.append(probs[:, true_class])
            top.append(probs.argmax(dim=1))
    return OcclusionMaps(
        window=window,
        stride=stride,
        feature_layer=feature_layer,
        feature_channel=channel,
        activation=torch.cat(activation).view(rows, cols).cpu(),
        probability=torch.cat(probability).view(rows, cols).cpu(),
        top_label=torch.cat(top).view(rows, cols).cpu(),
        true_class=true_class,
    )

"""Grad-CAM and guided Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391).

Grad-CAM weighs each feature map of a convolutional layer by the spatial mean of the target's
gradient over it, sums the weighted maps and keeps the positive part: a coarse map of where the
layer sees evidence for the class. Captum's `LayerGradCam` computes it; here it is upsampled
bilinearly to the input, as in the paper. Guided Grad-CAM multiplies that map with guided
backprop's (`cnnzoo.interpret.attribution.GuidedBackprop`), pixel-sharp where both agree.

The default layer is the last one with a spatial output (more than one position) that runs
once per forward pass: the final stage of a ResNet, the last pooling of AlexNet or LeNet-5.
"""

from __future__ import annotations

import torch
from captum.attr import GradientAttribution, LayerAttribution, LayerGradCam
from torch import nn

from cnnzoo.errors import UnsupportedModel
from cnnzoo.interpret.attribution import GuidedBackprop, Target, checked_forward
from cnnzoo.interpret.modules import get_layer, record_runs, require_single_run
from cnnzoo.interpret.rules import left_as_found

__all__ = ["GradCam", "GuidedGradCam", "cam_layer"]


def cam_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The last module to finish with a spatial output (`[C, H, W]`, H*W > 1) that runs once
    when `model` sees `x`; of a container and its last child the container (same tensor)."""
    spatial = [
        run.name
        for run in record_runs(model, x)
        if run.calls == 1
        and run.output_shape is not None
        and len(run.output_shape) == 3
        and run.output_shape[1] * run.output_shape[2] > 1
    ]
    if not spatial:
        raise UnsupportedModel(
            f"{type(model).__name__} has no layer with a spatial output for Grad-CAM to look at"
        )
    return spatial[-1]


class GradCam(GradientAttribution):
    r"""Grad-CAM of `layer`, upsampled bilinearly to the input.

    Args:
        model: the classifier.
        layer: the module whose output Grad-CAM weighs (default: `cam_layer`).

    The model runs in eval mode with frozen parameters; its flags are as before after each call.
    """

    def __init__(self, model: nn.Module, layer: str | None = None) -> None:
        GradientAttribution.__init__(self, model)
        self.model = model
        self.layer = layer

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:  # type: ignore[override]
        r"""
        Args:
            inputs: a batch `[N, C, H, W]`; not modified.
            target: the output index per example (an int for all, or one per example).

        Returns:
            `[N, 1, H, W]`: relu(sum_k mean(dy/dA_k) A_k) of the layer, upsampled to H x W.
        """
        layer = self.layer or cam_layer(self.model, inputs[:1])
        require_single_run(self.model, [layer], inputs)  # also LayerNotFound
        with torch.inference_mode(False), torch.enable_grad(), left_as_found(self.model):
            x = inputs.detach().clone().requires_grad_(True)
            forward = checked_forward(self.model, target)
            engine = LayerGradCam(forward, get_layer(self.model, layer))
            cam = engine.attribute(x, target=target, relu_attributions=True)
        size = tuple(inputs.shape[-2:])
        return LayerAttribution.interpolate(cam.detach(), size, interpolate_mode="bilinear")

    def warnings(self) -> tuple[str, ...]:
        """Grad-CAM weighs the layer's own activations, so it always depends on the input."""
        return ()


class GuidedGradCam(GradCam):
    r"""Guided backprop times the upsampled Grad-CAM of `layer`.

    Args:
        model: the classifier (`nn.ReLU` modules only, as for guided backprop).
        layer: the Grad-CAM layer (default: `cam_layer`).
    """

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:  # type: ignore[override]
        r"""
        Returns:
            `[N, C, H, W]`: guided backprop's map times the upsampled Grad-CAM, per channel.
        """
        guided = GuidedBackprop(self.model).attribute(inputs, target=target)
        return guided * super().attribute(inputs, target=target)

    def warnings(self) -> tuple[str, ...]:
        """Those of guided backprop (Grad-CAM itself always depends on the input)."""
        return GuidedBackprop(self.model).warnings()

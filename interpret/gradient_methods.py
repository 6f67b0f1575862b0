"""Input x gradient and integrated gradients: Captum's implementations bound to a model the way
the method table builds every method (`Class(model)`, `attribute(inputs, target)`,
`warnings()`), with the model left as found after each call.

Integrated gradients (Sundararajan et al. 2017, https://arxiv.org/abs/1703.01365) uses Captum's
defaults: a zero baseline (in the preprocessed input, i.e. the dataset mean), 50 Gauss-Legendre
steps. The explanation graphs (`cnnzoo.interpret.graphs`) compute both exactly so, and are
checked against these.
"""

from __future__ import annotations

import torch
from captum.attr import InputXGradient as CaptumInputXGradient
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from torch import nn

from cnnzoo.errors import InvalidInput
from cnnzoo.interpret.attribution import Target, checked_forward
from cnnzoo.interpret.rules import left_as_found

__all__ = ["InputXGradient", "IntegratedGradients"]


class InputXGradient(CaptumInputXGradient):
    r"""The input times the gradient of the target output (Shrikumar et al. 2016,
    https://arxiv.org/abs/1605.01713), per input channel.

    Args:
        model: the classifier (run in eval mode with frozen parameters; flags restored).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.model = model

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:  # type: ignore[override]
        r"""
        Returns:
            A tensor shaped like `inputs`: `inputs * d output[target] / d inputs`.
        """
        with torch.inference_mode(False), torch.enable_grad(), left_as_found(self.model):
            self.forward_func = checked_forward(self.model, target)
            x = inputs.detach().clone().requires_grad_(True)
            maps = super().attribute(x, target=target)
        return maps.detach()

    def warnings(self) -> tuple[str, ...]:
        return ()


class IntegratedGradients(CaptumIntegratedGradients):
    r"""Integrated gradients from a constant baseline, Captum's Gauss-Legendre rule.

    Args:
        model: the classifier (run in eval mode with frozen parameters; flags restored).
        steps: integration steps (Captum's `n_steps`, default 50).
        baseline: the baseline's value in every element of the preprocessed input (default 0).
        internal_batch_size: scaled copies per forward/backward pass (default: all at once).
    """

    def __init__(
        self,
        model: nn.Module,
        steps: int = 50,
        baseline: float = 0.0,
        internal_batch_size: int | None = None,
    ) -> None:
        if steps < 1:
            raise InvalidInput(f"integrated gradients needs at least 1 step, got {steps}")
        super().__init__(model)
        self.model = model
        self.steps = steps
        self.baseline = float(baseline)
        self.internal_batch_size = internal_batch_size

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:  # type: ignore[override]
        r"""
        Returns:
            A tensor shaped like `inputs`: `(inputs - baseline) * integral of the gradient`.
        """
        with torch.inference_mode(False), torch.enable_grad(), left_as_found(self.model):
            # the target is checked against the unscaled batch: Captum repeats it per step
            with torch.no_grad():
                checked_forward(self.model, target)(inputs.detach())
            self.forward_func = self.model
            maps = super().attribute(
                inputs.detach(),
                baselines=self.baseline,
                target=target,
                n_steps=self.steps,
                method="gausslegendre",
                internal_batch_size=self.internal_batch_size,
            )
        return maps.detach()

    def warnings(self) -> tuple[str, ...]:
        return ()

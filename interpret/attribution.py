"""Input attribution for a class: plain gradient, deconvnet and guided backprop.

One parent (`ReluRuleAttribution`, a Captum `GradientAttribution`) takes the ReLU rule; the three
named methods only pick it. Captum supplies the attribution contract, target selection and the
gradient computation (`GradientAttribution.gradient_func`); `rules.relu_rule` supplies
the ReLU hooks (see its docstring for why these and not Captum's own).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from captum.attr import GradientAttribution
from torch import nn

from cnnzoo.errors import InvalidInput
from cnnzoo.interpret.rules import Rule, input_independence, relu_rule

__all__ = [
    "Deconvnet",
    "Gradient",
    "GuidedBackprop",
    "ReluRuleAttribution",
    "checked_forward",
    "for_method",
]

Target = int | Sequence[int] | torch.Tensor | None


def _check_target(output: torch.Tensor, target: Target) -> None:
    """Refuse, with the bound, a target that Captum would meet with a bare AssertionError or
    IndexError: none for a model with several outputs, an index outside them, a wrong count."""
    outputs = output.shape[1] if output.dim() >= 2 else 1
    if target is None:
        if outputs == 1:
            return
        raise InvalidInput(
            f"a target is required: the model has {outputs} outputs per example; pass the class "
            f"index to explain (0 to {outputs - 1})"
        )
    values = [target] if isinstance(target, int) else torch.as_tensor(target).flatten().tolist()
    if not isinstance(target, int) and len(values) != output.shape[0]:
        raise InvalidInput(
            f"{len(values)} targets for {output.shape[0]} examples; give one per example or one "
            "int for all"
        )
    bad = [v for v in values if not 0 <= int(v) < outputs]
    if bad:
        raise InvalidInput(
            f"target {bad[0]} is out of range: the model has {outputs} outputs (0 to {outputs - 1})"
        )


def checked_forward(
    model: Callable[[torch.Tensor], torch.Tensor], target: Target
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`model` as a Captum forward function that checks `target` against its output."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        output = model(x)
        _check_target(output, target)
        return output

    return forward


class ReluRuleAttribution(GradientAttribution):
    r"""Gradient of a target output with respect to the input, every ReLU passing the gradient
    back by `rule`.

    Args:
        model: the network; every ReLU must be an `nn.ReLU` module (reused and in-place modules
            are fine; functional `F.relu` raises `cnnzoo.errors.UnsupportedModel`).
        rule: the ReLU backward rule.

    The model is run in eval mode with frozen parameters; its flags and hooks are as before
    after every call, also one that raised.
    """

    def __init__(self, model: nn.Module, rule: Rule) -> None:
        GradientAttribution.__init__(self, model)
        self.model = model
        self.rule = rule

    def attribute(self, inputs: torch.Tensor, target: Target = None) -> torch.Tensor:  # type: ignore[override]
        r"""
        Args:
            inputs: a batch `[N, ...]`; not modified.
            target: the output index per example (an int for all, or one per example); None
                for models with one output per example.

        Raises:
            InvalidInput: no target for a model with several outputs, or one out of range.
            UnsupportedModel: an activation the rule does not cover (see `relu_rule`).

        Returns:
            A tensor shaped like `inputs`: the rule-modified gradient of the target output.

        Example::

            >>> maps = GuidedBackprop(model).attribute(images, target=labels)  # [N, C, H, W]
        """
        with torch.inference_mode(False), torch.enable_grad():
            x = inputs.detach().clone().requires_grad_(True)
            with relu_rule(self.model, self.rule):
                forward = checked_forward(self.model, target)
                (grad,) = self.gradient_func(forward, (x,), target)
        return grad.detach()

    def warnings(self) -> tuple[str, ...]:
        """Why this method's maps of the model cannot depend on the input, if they cannot
        (see `cnnzoo.interpret.rules.input_independence`)."""
        reason = input_independence(self.model, self.rule)
        return () if reason is None else (reason,)


class Gradient(ReluRuleAttribution):
    """The plain gradient (Simonyan et al. 2014, https://arxiv.org/abs/1312.6034): the baseline
    the two rules below are compared with."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, Rule.GRADIENT)


class Deconvnet(ReluRuleAttribution):
    """Zeiler & Fergus (2014) deconvnet, https://arxiv.org/abs/1311.2901: ReLUs pass `relu(g)`
    back whatever their input was; max-pooling routes through its argmax switches.

    Without max-pooling the map does not depend on the input at all, so read it as "which image
    structure this unit is tuned to", not as evidence for a particular image's class.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, Rule.DECONVNET)


class GuidedBackprop(ReluRuleAttribution):
    """Guided backpropagation (Springenberg et al. 2015, https://arxiv.org/abs/1412.6806): ReLUs
    pass `relu(g) * 1[x > 0]` back.

    Adebayo et al. 2018 (https://arxiv.org/abs/1810.03292) show these maps barely change when
    the top layers are randomised: they reconstruct image structure more than they explain a class.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, Rule.GUIDED)


_BY_RULE = {Rule.GRADIENT: Gradient, Rule.DECONVNET: Deconvnet, Rule.GUIDED: GuidedBackprop}


def for_method(model: nn.Module, rule: Rule) -> ReluRuleAttribution:
    """The named attribution class for `rule`, bound to `model`."""
    return _BY_RULE[rule](model)

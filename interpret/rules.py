"""ReLU backward rules and the context managers that apply them without leaving a trace.

Gradient, deconvnet and guided backprop differ only in how a ReLU passes the gradient back.
With x the ReLU's input, g the gradient arriving at its output and m = 1[x > 0]:

    gradient         g * m
    deconvnet        relu(g)             (Zeiler & Fergus 2014, https://arxiv.org/abs/1311.2901)
    guided backprop  relu(g) * m         (Springenberg et al. 2015, https://arxiv.org/abs/1412.6806)

Max-pooling needs no rule: autograd already routes its gradient through the argmax, which is
exactly the deconvnet's "switches".

Why not Captum's hooks: Captum's `ModifiedReluGradientAttribution` keeps one "last output
gradient" per ReLU module and device. When one module is called twice and the two calls' backward
passes interleave (a ReLU module shared by two parallel branches), its deconvnet reads the other
call's gradient. Here each `nn.ReLU` module's forward is swapped for the rule itself while the
rule is active, so every *call* gets its own autograd node: separate modules, one module reused
any number of times and `inplace=True` modules all give the same maps.

Functional `F.relu` / `torch.relu` / `Tensor.relu` cannot be hooked. Rather than silently
degrading to the plain gradient, `relu_rule` watches for ReLU calls while it is active (a
`TorchFunctionMode`); the swapped modules make none, so any call it sees is a functional one and
raises `UnsupportedModel`.

The rules are defined for ReLU only. Any other activation (`nn.ReLU6`, `LeakyReLU`, `GELU`,
`SiLU`, `Sigmoid`, ..., as a module or a function) would pass the plain gradient back under the
name deconvnet or guided backprop, so `relu_rule` refuses a model that has one, naming the
module and its type.

`input_independence` says when a rule's maps cannot depend on the input at all: the deconvnet's
backward pass uses the input only through max-pooling's switches, so on a network without
max-pooling (ResNet-20, say) every image gets the same map for a given class or unit.
"""

from __future__ import annotations

import contextlib
import enum
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from cnnzoo.errors import UnsupportedModel

__all__ = ["Rule", "input_independence", "left_as_found", "model_lock", "relu_rule"]


class Rule(enum.Enum):
    """How a ReLU passes the gradient back."""

    GRADIENT = "gradient"
    DECONVNET = "deconvnet"
    GUIDED = "guided-backprop"


class _RuleReLU(torch.autograd.Function):
    """relu(x) forward; the chosen rule backward. One node per call, so reuse is safe."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rule: Rule) -> torch.Tensor:
        out = x.clamp(min=0)
        ctx.rule = rule
        ctx.save_for_backward(out)  # out > 0 exactly where x > 0
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        (out,) = ctx.saved_tensors
        if ctx.rule is Rule.DECONVNET:
            return grad.clamp(min=0), None
        if ctx.rule is Rule.GUIDED:
            grad = grad.clamp(min=0)
        # The fused kernel of ReLU's own backward: grad where out > 0, else 0.
        return torch.ops.aten.threshold_backward(grad, out, 0), None


# Functional spellings of ReLU that bypass `nn.ReLU` modules.
_FUNCTIONAL_RELUS: frozenset[Callable[..., Any]] = frozenset(
    {
        torch.relu,
        torch.relu_,
        torch.nn.functional.relu,
        torch.nn.functional.relu_,
        torch.Tensor.relu,
        torch.Tensor.relu_,
    }
)


F = torch.nn.functional
# Activations the rules do not cover: as modules (refused by type before the forward pass) ...
_OTHER_ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus,
    nn.Softsign, nn.LogSigmoid, nn.Threshold, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.GLU,
)  # fmt: skip
# ... and as functions (seen by the guard while the model runs).
_FUNCTIONAL_OTHERS: frozenset[Callable[..., Any]] = frozenset(
    {
        F.relu6, F.leaky_relu, F.prelu, F.rrelu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
        F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, F.softsign, F.logsigmoid,
        F.threshold, F.tanhshrink, F.softshrink, F.hardshrink, F.glu, torch.sigmoid,
        torch.Tensor.sigmoid, torch.tanh, torch.Tensor.tanh,
    }
)  # fmt: skip
_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
              nn.AdaptiveMaxPool3d, nn.FractionalMaxPool2d, nn.FractionalMaxPool3d)  # fmt: skip


class _FunctionalReluGuard(TorchFunctionMode):
    """Raises on any ReLU call while active (the hooked `nn.ReLU` modules compute theirs
    without one, so every ReLU call seen here is a functional one) and on any other activation
    function (the rule would not apply to it)."""

    def __init__(self, rule: Rule) -> None:
        super().__init__()
        self.rule = rule

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if func in _FUNCTIONAL_RELUS:
            raise UnsupportedModel(
                "the model calls a functional ReLU (F.relu / torch.relu / Tensor.relu) that "
                "no hook can see, so deconvnet and guided backprop would silently equal the plain "
                "gradient there; replace it with an nn.ReLU module"
            )
        if func in _FUNCTIONAL_OTHERS:
            raise UnsupportedModel(
                f"the model calls {getattr(func, '__name__', func)}, an activation other than "
                f"ReLU; {self.rule.value} is defined for ReLU only and would pass the plain "
                "gradient back there"
            )
        return func(*args, **(kwargs or {}))


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The lock that serialises rule-based work on one model (the swapped ReLU forwards and the
    eval/frozen flags are model-wide state)."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def left_as_found(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters inside; every module's `training` flag and every
    parameter's `requires_grad` restored on exit, also when the body raises."""
    with model_lock(model):
        training = [(module, module.training) for module in model.modules()]
        requires = [(param, param.requires_grad) for param in model.parameters()]
        try:
            model.eval()
            for param, _ in requires:
                param.requires_grad_(False)
            yield model
        finally:
            for module, flag in training:
                module.training = flag
            for param, flag in requires:
                param.requires_grad_(flag)


@contextlib.contextmanager
def relu_rule(model: nn.Module, rule: Rule) -> Iterator[nn.Module]:
    """Apply `rule` to every `nn.ReLU` call of `model` inside the block.

    Inside the block every `nn.ReLU` module computes relu(x) with the rule's backward (its
    `forward` is swapped, so in-place modules run out of place and reused modules get one
    autograd node per call), the model runs in eval mode with frozen parameters, and any
    functional ReLU call raises `UnsupportedModel`. On exit, normal or not, the modules'
    `forward`, `training` and `requires_grad` are as before.

    Raises:
        UnsupportedModel: (deconvnet, guided backprop) the model has an activation other than
            ReLU, as a module (named with its type, before anything runs) or a function.

    Example::

        with relu_rule(model, Rule.GUIDED):
            x = image.clone().requires_grad_()
            grad = torch.autograd.grad(model(x)[0, label], x)[0]
    """
    with left_as_found(model):
        if rule is Rule.GRADIENT:
            yield model
            return
        for name, module in model.named_modules():
            if isinstance(module, _OTHER_ACTIVATIONS):
                raise UnsupportedModel(
                    f"module {name!r} is {type(module).__name__}, an activation other than ReLU; "
                    f"{rule.value} is defined for ReLU only and would pass the plain gradient "
                    "back there (use the gradient, or a model with nn.ReLU)"
                )
        relus = [module for module in model.modules() if isinstance(module, nn.ReLU)]
        own = [(module, module.__dict__.get("forward")) for module in relus]

        def ruled(x: torch.Tensor) -> torch.Tensor:
            return _RuleReLU.apply(x, rule)

        try:
            for module in relus:
                # The module's forward becomes the rule itself: one autograd node per call,
                # nothing computed twice, never in place.
                module.forward = ruled
            with _FunctionalReluGuard(rule):
                yield model
        finally:
            for module, forward in own:
                if forward is None:
                    module.__dict__.pop("forward", None)
                else:
                    module.forward = forward


def input_independence(model: nn.Module, rule: Rule) -> str | None:
    """Why `rule`'s maps of `model` cannot depend on the input, or None when they can.

    Deconvnet: every ReLU passes relu(g) back whatever its input, convolutions, linear layers,
    average pooling and eval-mode batch norm are linear, so only max-pooling's switches carry the
    input into the map; without max-pooling the map is the same for every image. Gradient and
    guided backprop also use the ReLUs' inputs, so they can be input-independent only in a model
    without any activation module and without max-pooling.
    """
    if any(isinstance(m, _MAX_POOLS) for m in model.modules()):
        return None
    name = type(model).__name__
    if rule is Rule.DECONVNET:
        return (
            f"deconvnet maps of {name} cannot depend on the input: the model has no max-pooling, "
            "so the map is the same for every image (it varies only with the class or unit); "
            "read it as the pattern the unit is tuned to, or use guided backprop"
        )
    if not any(isinstance(m, (nn.ReLU, *_OTHER_ACTIVATIONS)) for m in model.modules()):
        return (
            f"{rule.value} maps of {name} cannot depend on the input: the model has no "
            "activation modules and no max-pooling, so it is linear"
        )
    return None
